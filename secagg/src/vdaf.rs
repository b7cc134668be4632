//! Prio3SumVec from the `prio` crate, as node, coordinator and helper use it: the node shards its
//! noisy integer vector into two input shares with a proof that every entry lies in range; the
//! coordinator (leader) and the helper each verify their share of that proof, keep an output
//! share, sum output shares into aggregate shares, and the coordinator unshards the two. No field
//! arithmetic or secret sharing is written here: every step is the crate's.

use prio::codec::{Encode, ParameterizedDecode};
use prio::vdaf::VerifyTransition;
use prio::vdaf::prio3::{
    Prio3InputShare, Prio3PublicShare, Prio3SumVec, Prio3VerifierMessage, Prio3VerifierShare,
    Prio3VerifyState,
};
use prio::vdaf::{Aggregatable, AggregateShare, Aggregator, Client, Collector, OutputShare};

/// The application context every Prio3 call is bound to.
pub const CONTEXT: &[u8] = b"stroom secure aggregation v1";
/// The leader's and helper's shared verification key length.
pub const VERIFY_KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 16;
/// Widest entry a report may declare: the sum of many nodes' entries must stay far below the
/// 128-bit field's modulus.
pub const MAX_BITS: u32 = 64;

type Field = prio::field::Field128;

#[derive(Debug, thiserror::Error)]
pub enum VdafError {
    #[error("bits must be between 2 and {MAX_BITS}, got {0}")]
    Bits(u32),
    #[error("a report needs at least one entry")]
    Empty,
    #[error("entry {index} is {value}: outside the encodable range ±2^{half_bits}")]
    OutOfRange {
        index: usize,
        value: i128,
        half_bits: u32,
    },
    #[error("{what} is not valid hex: {message}")]
    Hex { what: &'static str, message: String },
    #[error("cannot decode the {what}: {message}")]
    Decode { what: &'static str, message: String },
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("prio: {0}")]
    Prio(String),
}

fn prio_err(e: impl std::fmt::Display) -> VdafError {
    VdafError::Prio(e.to_string())
}

fn decode<T: ParameterizedDecode<P>, P>(
    what: &'static str,
    param: &P,
    bytes: &[u8],
) -> Result<T, VdafError> {
    T::get_decoded_with_param(param, bytes).map_err(|e| VdafError::Decode {
        what,
        message: e.to_string(),
    })
}

pub fn unhex(what: &'static str, text: &str) -> Result<Vec<u8>, VdafError> {
    hex::decode(text).map_err(|e| VdafError::Hex {
        what,
        message: e.to_string(),
    })
}

fn encoded(e: &impl Encode) -> Result<Vec<u8>, VdafError> {
    e.get_encoded().map_err(prio_err)
}

/// The public shape of one report: entry width and vector length.
#[derive(Debug, Clone)]
pub struct Shape {
    pub bits: u32,
    pub length: usize,
    vdaf: Prio3SumVec,
}

impl Shape {
    pub fn new(bits: u32, length: usize) -> Result<Shape, VdafError> {
        if !(2..=MAX_BITS).contains(&bits) {
            return Err(VdafError::Bits(bits));
        }
        if length == 0 {
            return Err(VdafError::Empty);
        }
        // √(bits·length) is the chunk length that keeps the proof smallest.
        let chunk = ((bits as f64 * length as f64).sqrt().ceil() as usize).max(1);
        let max = (1u128 << bits) - 1;
        let vdaf = Prio3SumVec::new_sum_vec(2, max, length, chunk).map_err(prio_err)?;
        Ok(Shape { bits, length, vdaf })
    }

    /// The offset that makes a signed entry non-negative: 2^(bits−1).
    pub fn offset(&self) -> i128 {
        1i128 << (self.bits - 1)
    }

    /// Signed integers as the entries Prio3 proves in range: v + 2^(bits−1) ∈ [0, 2^bits).
    pub fn encode(&self, values: &[i64]) -> Result<Vec<u128>, VdafError> {
        let offset = self.offset();
        values
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let e = *v as i128 + offset;
                if e < 0 || e >= 2 * offset {
                    Err(VdafError::OutOfRange {
                        index,
                        value: *v as i128,
                        half_bits: self.bits - 1,
                    })
                } else {
                    Ok(e as u128)
                }
            })
            .collect()
    }

    /// The sum of `count` reports' signed integers from the unsharded sum of their entries.
    pub fn decode_sum(&self, sums: &[u128], count: usize) -> Vec<i128> {
        let shift = self.offset() * count as i128;
        sums.iter().map(|s| *s as i128 - shift).collect()
    }

    /// Node: the public share and the leader's and helper's input shares, encoded.
    pub fn shard(&self, values: &[i64], nonce: &[u8; NONCE_LEN]) -> Result<Sharded, VdafError> {
        if values.len() != self.length {
            return Err(VdafError::Prio(format!(
                "{} values for a report of length {}",
                values.len(),
                self.length
            )));
        }
        let measurement = self.encode(values)?;
        let (public, inputs) = self
            .vdaf
            .shard(CONTEXT, &measurement, nonce)
            .map_err(prio_err)?;
        let [leader, helper] = <[_; 2]>::try_from(inputs)
            .map_err(|_| VdafError::Prio("Prio3 made other than two input shares".into()))?;
        Ok(Sharded {
            public_share: encoded(&public)?,
            leader_share: encoded(&leader)?,
            helper_share: encoded(&helper)?,
        })
    }

    fn public_share(&self, bytes: &[u8]) -> Result<Prio3PublicShare<32>, VdafError> {
        decode("public share", &self.vdaf, bytes)
    }

    fn input_share(
        &self,
        aggregator: usize,
        bytes: &[u8],
    ) -> Result<Prio3InputShare<Field, 32>, VdafError> {
        decode("input share", &(&self.vdaf, aggregator), bytes)
    }

    /// Leader: its verification state and the verifier share the helper needs.
    pub fn leader_init(
        &self,
        verify_key: &[u8; VERIFY_KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        public_share: &[u8],
        leader_share: &[u8],
    ) -> Result<(LeaderState, Vec<u8>), VdafError> {
        let public = self.public_share(public_share)?;
        let input = self.input_share(0, leader_share)?;
        let (state, share) = self
            .vdaf
            .verify_init(verify_key, CONTEXT, 0, &(), nonce, &public, &input)
            .map_err(|e| VdafError::Verify(e.to_string()))?;
        Ok((LeaderState(state), encoded(&share)?))
    }

    /// Helper: checks the proof from both verifier shares and returns its output share and the
    /// verifier message the leader finishes with. A report whose entries are out of range fails.
    pub fn helper_verify(
        &self,
        verify_key: &[u8; VERIFY_KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        public_share: &[u8],
        helper_share: &[u8],
        leader_verifier_share: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), VdafError> {
        let public = self.public_share(public_share)?;
        let input = self.input_share(1, helper_share)?;
        let (state, own) = self
            .vdaf
            .verify_init(verify_key, CONTEXT, 1, &(), nonce, &public, &input)
            .map_err(|e| VdafError::Verify(e.to_string()))?;
        let leader: Prio3VerifierShare<Field, 32> =
            decode("leader's verifier share", &state, leader_verifier_share)?;
        let message = self
            .vdaf
            .verifier_shares_to_message(CONTEXT, &(), [leader, own])
            .map_err(|e| VdafError::Verify(e.to_string()))?;
        let out = self.finish(state, message.clone())?;
        Ok((encoded(&out)?, encoded(&message)?))
    }

    /// Leader: its output share, from the helper's verifier message.
    pub fn leader_finish(
        &self,
        state: LeaderState,
        message: &[u8],
    ) -> Result<OutputShare<Field>, VdafError> {
        let message: Prio3VerifierMessage<32> = decode("verifier message", &state.0, message)?;
        self.finish(state.0, message)
    }

    fn finish(
        &self,
        state: Prio3VerifyState<Field, 32>,
        message: Prio3VerifierMessage<32>,
    ) -> Result<OutputShare<Field>, VdafError> {
        match self
            .vdaf
            .verify_next(CONTEXT, state, message)
            .map_err(|e| VdafError::Verify(e.to_string()))?
        {
            VerifyTransition::Finish(out) => Ok(out),
            VerifyTransition::Continue(..) => Err(VdafError::Verify(
                "Prio3 asked for a second round of verification".into(),
            )),
        }
    }

    pub fn decode_output_share(&self, bytes: &[u8]) -> Result<OutputShare<Field>, VdafError> {
        decode("output share", &(&self.vdaf, &()), bytes)
    }

    pub fn decode_aggregate_share(&self, bytes: &[u8]) -> Result<AggregateShare<Field>, VdafError> {
        decode("aggregate share", &(&self.vdaf, &()), bytes)
    }

    /// The sum of output shares, encoded.
    pub fn aggregate(
        &self,
        outputs: impl IntoIterator<Item = OutputShare<Field>>,
    ) -> Result<AggregateShare<Field>, VdafError> {
        let mut total = self.vdaf.aggregate_init(&());
        for out in outputs {
            total.accumulate(&out).map_err(prio_err)?;
        }
        Ok(total)
    }

    pub fn encode_aggregate_share(
        &self,
        share: &AggregateShare<Field>,
    ) -> Result<Vec<u8>, VdafError> {
        encoded(share)
    }

    /// Collector: the entry-wise sum of `count` reports from the two aggregate shares.
    pub fn unshard(
        &self,
        leader: AggregateShare<Field>,
        helper: AggregateShare<Field>,
        count: usize,
    ) -> Result<Vec<u128>, VdafError> {
        self.vdaf
            .unshard(&(), [leader, helper], count)
            .map_err(prio_err)
    }
}

/// The leader's state between its verifier share and the helper's message.
#[derive(Clone)]
pub struct LeaderState(Prio3VerifyState<Field, 32>);

/// A report's three encoded parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharded {
    pub public_share: Vec<u8>,
    pub leader_share: Vec<u8>,
    pub helper_share: Vec<u8>,
}

/// A fresh random nonce or verification key from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], VdafError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(prio_err)?;
    Ok(out)
}

/// Parses a hex verification key (the leader's and helper's shared secret).
pub fn parse_verify_key(text: &str) -> Result<[u8; VERIFY_KEY_LEN], VdafError> {
    let bytes = unhex("verification key", text.trim())?;
    <[u8; VERIFY_KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| VdafError::Decode {
        what: "verification key",
        message: format!("{} bytes, expected {VERIFY_KEY_LEN}", bytes.len()),
    })
}

pub fn parse_nonce(text: &str) -> Result<[u8; NONCE_LEN], VdafError> {
    let bytes = unhex("nonce", text)?;
    <[u8; NONCE_LEN]>::try_from(bytes.as_slice()).map_err(|_| VdafError::Decode {
        what: "nonce",
        message: format!("{} bytes, expected {NONCE_LEN}", bytes.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(shape: &Shape, vectors: &[Vec<i64>]) -> Result<Vec<i128>, VdafError> {
        let key = random_bytes::<VERIFY_KEY_LEN>()?;
        let (mut leader_out, mut helper_out) = (Vec::new(), Vec::new());
        for v in vectors {
            let nonce = random_bytes::<NONCE_LEN>()?;
            let s = shape.shard(v, &nonce)?;
            let (state, vs) = shape.leader_init(&key, &nonce, &s.public_share, &s.leader_share)?;
            let (out, msg) =
                shape.helper_verify(&key, &nonce, &s.public_share, &s.helper_share, &vs)?;
            helper_out.push(shape.decode_output_share(&out)?);
            leader_out.push(shape.leader_finish(state, &msg)?);
        }
        let l = shape.aggregate(leader_out)?;
        let h = shape.aggregate(helper_out)?;
        // Aggregate shares travel encoded.
        let h = shape.decode_aggregate_share(&shape.encode_aggregate_share(&h)?)?;
        let sums = shape.unshard(l, h, vectors.len())?;
        Ok(shape.decode_sum(&sums, vectors.len()))
    }

    #[test]
    fn the_sum_of_reports_is_the_sum_of_the_vectors() {
        let shape = Shape::new(32, 4).expect("shape");
        let vectors = vec![
            vec![3, -7, 0, 2_000_000_000],
            vec![-2_147_483_648, 5, 11, -1],
            vec![0, 0, -4, 2_147_483_647],
        ];
        let sum = run(&shape, &vectors).expect("run");
        let expect: Vec<i128> = (0..4)
            .map(|i| vectors.iter().map(|v| v[i] as i128).sum())
            .collect();
        assert_eq!(sum, expect);
    }

    #[test]
    fn out_of_range_values_are_refused_at_the_node() {
        let shape = Shape::new(8, 2).expect("shape");
        assert!(matches!(
            shape.encode(&[127, 128]),
            Err(VdafError::OutOfRange { index: 1, .. })
        ));
        assert!(shape.encode(&[-128, 127]).is_ok());
        assert!(matches!(
            shape.encode(&[-129, 0]),
            Err(VdafError::OutOfRange { .. })
        ));
    }

    #[test]
    fn a_share_of_another_shape_fails_verification() {
        // A node that proves 16-bit entries where the run expects 8 bits: the aggregators, who
        // decode with the run's shape, cannot verify it.
        let wide = Shape::new(16, 2).expect("shape");
        let narrow = Shape::new(8, 2).expect("shape");
        let key = random_bytes::<VERIFY_KEY_LEN>().expect("key");
        let nonce = random_bytes::<NONCE_LEN>().expect("nonce");
        let s = wide.shard(&[30_000, -30_000], &nonce).expect("shard");
        let failed = narrow
            .leader_init(&key, &nonce, &s.public_share, &s.leader_share)
            .and_then(|(_, vs)| {
                narrow.helper_verify(&key, &nonce, &s.public_share, &s.helper_share, &vs)
            });
        assert!(failed.is_err());
    }

    #[test]
    fn a_tampered_share_fails_verification() {
        let shape = Shape::new(8, 3).expect("shape");
        let key = random_bytes::<VERIFY_KEY_LEN>().expect("key");
        let nonce = random_bytes::<NONCE_LEN>().expect("nonce");
        let mut s = shape.shard(&[1, 2, 3], &nonce).expect("shard");
        // Flip a byte of the leader's measurement share: the proof no longer holds.
        s.leader_share[3] ^= 0x40;
        let (_, vs) = shape
            .leader_init(&key, &nonce, &s.public_share, &s.leader_share)
            .expect("leader init decodes");
        assert!(matches!(
            shape.helper_verify(&key, &nonce, &s.public_share, &s.helper_share, &vs),
            Err(VdafError::Verify(_))
        ));
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(matches!(Shape::new(1, 3), Err(VdafError::Bits(1))));
        assert!(matches!(Shape::new(65, 3), Err(VdafError::Bits(65))));
        assert!(matches!(Shape::new(32, 0), Err(VdafError::Empty)));
    }
}
