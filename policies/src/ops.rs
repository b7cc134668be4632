//! Operations helpers shared by node and coordinator: per-route HTTP metrics in the Prometheus
//! text format, and certificate expiry read straight from the DER (for alerts before a
//! federation certificate runs out).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0];

#[derive(Default, Clone)]
struct RouteStats {
    count: u64,
    sum_seconds: f64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    buckets: Vec<u64>,
}

/// Requests and latency per (method, route template, status).
#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<BTreeMap<(String, String, u16), RouteStats>>,
}

impl HttpMetrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        let s = routes
            .entry((method.to_string(), route.to_string(), status))
            .or_insert_with(|| RouteStats {
                buckets: vec![0; LATENCY_BUCKETS.len()],
                ..Default::default()
            });
        let secs = elapsed.as_secs_f64();
        s.count += 1;
        s.sum_seconds += secs;
        for (b, upper) in s.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= *upper {
                *b += 1;
            }
        }
    }

    /// `PREFIX_http_requests_total` and `PREFIX_http_request_duration_seconds` with `labels`
    /// (e.g. `node="P01",`) in front of each series' own labels.
    pub fn render(&self, prefix: &str, labels: &str) -> String {
        let mut s = String::new();
        let Ok(routes) = self.routes.lock() else {
            return s;
        };
        let _ = writeln!(
            s,
            "# HELP {prefix}_http_requests_total HTTP requests by method, route and status.\n# TYPE {prefix}_http_requests_total counter"
        );
        for ((m, r, st), v) in routes.iter() {
            let _ = writeln!(
                s,
                "{prefix}_http_requests_total{{{labels}method=\"{m}\",route=\"{r}\",status=\"{st}\"}} {}",
                v.count
            );
        }
        let _ = writeln!(
            s,
            "# HELP {prefix}_http_request_duration_seconds HTTP request latency by method and route.\n# TYPE {prefix}_http_request_duration_seconds histogram"
        );
        let mut by_route: BTreeMap<(String, String), RouteStats> = BTreeMap::new();
        for ((m, r, _), v) in routes.iter() {
            let e = by_route
                .entry((m.clone(), r.clone()))
                .or_insert_with(|| RouteStats {
                    buckets: vec![0; LATENCY_BUCKETS.len()],
                    ..Default::default()
                });
            e.count += v.count;
            e.sum_seconds += v.sum_seconds;
            for (a, b) in e.buckets.iter_mut().zip(&v.buckets) {
                *a += b;
            }
        }
        let name = format!("{prefix}_http_request_duration_seconds");
        for ((m, r), v) in by_route {
            let l = format!("{labels}method=\"{m}\",route=\"{r}\"");
            for (upper, c) in LATENCY_BUCKETS.iter().zip(&v.buckets) {
                let _ = writeln!(s, "{name}_bucket{{{l},le=\"{upper}\"}} {c}");
            }
            let _ = writeln!(s, "{name}_bucket{{{l},le=\"+Inf\"}} {}", v.count);
            let _ = writeln!(s, "{name}_sum{{{l}}} {}", v.sum_seconds);
            let _ = writeln!(s, "{name}_count{{{l}}} {}", v.count);
        }
        s
    }
}

/// One DER element: (tag, content, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Seconds since the Unix epoch of a UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, content: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(content).ok()?;
    let text = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i32 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<u32>().ok();
    let date = chrono::NaiveDate::from_ymd_opt(year, field(0)?, field(2)?)?;
    let time = date.and_hms_opt(field(4)?, field(6)?, field(8)?)?;
    Some(time.and_utc().timestamp())
}

/// The `notAfter` of an X.509 certificate (DER), as seconds since the Unix epoch.
pub fn certificate_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_element(der)?;
    let (_, tbs, _) = der_element(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = der_element(rest)?;
    // The optional explicit [0] version comes first.
    if tag == 0xa0 {
        rest = r;
    }
    // serial, signature algorithm, issuer, then validity.
    for _ in 0..3 {
        let (_, _, r) = der_element(rest)?;
        rest = r;
    }
    let (_, validity, _) = der_element(rest)?;
    let (_, _, after_not_before) = der_element(validity)?;
    let (tag, not_after, _) = der_element(after_not_before)?;
    der_time(tag, not_after)
}

/// Gauges of certificate expiry: `PREFIX_certificate_not_after_seconds{LABELScert="NAME"}`.
pub fn render_cert_expiry(prefix: &str, labels: &str, certs: &[(&str, Option<i64>)]) -> String {
    let mut s = format!(
        "# HELP {prefix}_certificate_not_after_seconds Expiry (Unix time) of the certificates this process uses; alert well before it.\n# TYPE {prefix}_certificate_not_after_seconds gauge\n"
    );
    for (name, t) in certs {
        if let Some(t) = t {
            let _ = writeln!(
                s,
                "{prefix}_certificate_not_after_seconds{{{labels}cert=\"{name}\"}} {t}"
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_both_encodings() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x18, b"20270101000000Z"), Some(1_798_761_600));
        assert_eq!(der_time(0x17, b"7001010000Z"), None);
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(certificate_not_after(&[]), None);
        assert_eq!(certificate_not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(certificate_not_after(&[0x30; 64]), None);
    }

    #[test]
    fn histogram_counts_are_cumulative() {
        let m = HttpMetrics::default();
        m.observe("GET", "/healthz", 200, Duration::from_millis(1));
        m.observe("GET", "/healthz", 200, Duration::from_millis(200));
        let text = m.render("x", "");
        assert!(
            text.contains(
                "x_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2"
            )
        );
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"0.5\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
    }
}
