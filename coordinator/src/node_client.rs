//! The coordinator's side of mutual TLS toward one node: it presents the coordinator certificate,
//! trusts only the federation CA, and accepts the node only when the node's certificate names the
//! provider this client was configured for (`<id>.node.stroom`), whatever address the node is
//! reached at. Requests time out and are retried with backoff; retries are safe because a node
//! answers a repeated request with its stored release.

use policies::wire::{Answer, BudgetStatus, ErrorBody, EvaluateRequest};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The DNS name a node's certificate must carry.
pub fn node_dns_name(node_id: &str) -> String {
    format!("{}.node.stroom", node_id.to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("TLS material {file}: {message}")]
    Material { file: PathBuf, message: String },
    #[error("node {node}: cannot connect or complete the TLS handshake: {message}")]
    Connect { node: String, message: String },
    #[error("node {node}: no answer within {seconds} s")]
    Timeout { node: String, seconds: f64 },
    #[error("node {node} refused ({status}): {error}: {message}")]
    Refused {
        node: String,
        status: u16,
        error: String,
        message: String,
    },
    #[error("node {node} failed ({status}): {message}")]
    Server {
        node: String,
        status: u16,
        message: String,
    },
    #[error("node {node} sent an unreadable answer: {message}")]
    BadAnswer { node: String, message: String },
}

impl NodeError {
    /// The node answered, with a refusal or an error of its own: it was reachable.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            NodeError::Refused { .. } | NodeError::Server { .. } | NodeError::BadAnswer { .. }
        )
    }

    /// Worth another attempt: the node may answer next time. Refusals (bad request, unknown
    /// indicator, exhausted budget) are final.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            NodeError::Connect { .. } | NodeError::Timeout { .. } | NodeError::Server { .. }
        )
    }
}

/// The coordinator's TLS identity and the federation's trust anchor.
#[derive(Debug, Clone)]
pub struct FederationTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub timeout: Duration,
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub initial_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: Duration::from_secs(60),
            attempts: 4,
            initial_backoff: Duration::from_millis(200),
        }
    }
}

/// Checks the chain against the federation CA and the name against the configured provider's.
#[derive(Debug)]
struct ExpectProvider {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ExpectProvider {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn material(file: &Path, message: impl ToString) -> NodeError {
    NodeError::Material {
        file: file.to_path_buf(),
        message: message.to_string(),
    }
}

/// Loaded once, shared by every node client.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl TlsMaterial {
    pub fn load(tls: &FederationTls) -> Result<Self, NodeError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&tls.ca).map_err(|e| material(&tls.ca, e))? {
            roots
                .add(c.map_err(|e| material(&tls.ca, e))?)
                .map_err(|e| material(&tls.ca, e))?;
        }
        if roots.is_empty() {
            return Err(material(&tls.ca, "no CA certificate found"));
        }
        let chain = CertificateDer::pem_file_iter(&tls.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| material(&tls.cert, e))?;
        if chain.is_empty() {
            return Err(material(&tls.cert, "no certificate found"));
        }
        let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| material(&tls.key, e))?;
        Ok(TlsMaterial {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
        })
    }
}

impl TlsMaterial {
    /// An HTTPS client presenting the coordinator's certificate that accepts only a server whose
    /// certificate chains to the federation CA and names `expected` (a node's or the helper's).
    pub fn client(&self, expected: &str, timeout: Duration) -> Result<reqwest::Client, String> {
        let name = ServerName::try_from(expected.to_string())
            .map_err(|e| format!("'{expected}' is not usable as a certificate name: {e}"))?;
        let inner = WebPkiServerVerifier::builder(self.roots.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut config =
            rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ExpectProvider { inner, name }))
                .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
                .map_err(|e| format!("coordinator certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(timeout)
            .build()
            .map_err(|e| chain_message(&e))
    }
}

/// A client for one node.
#[derive(Debug, Clone)]
pub struct NodeClient {
    pub id: String,
    /// Parsed once: at a thousand nodes, parsing per request shows in the coordinator's profile.
    evaluate_url: reqwest::Url,
    budget_url: reqwest::Url,
    http: reqwest::Client,
    retry: RetryPolicy,
}

pub(crate) fn chain_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

impl NodeClient {
    pub fn new(
        id: &str,
        url: &str,
        tls: &TlsMaterial,
        retry: RetryPolicy,
    ) -> Result<Self, NodeError> {
        let http = tls
            .client(&node_dns_name(id), retry.timeout)
            .map_err(|message| NodeError::Connect {
                node: id.to_string(),
                message,
            })?;
        let unusable = |why: String| NodeError::Connect {
            node: id.to_string(),
            message: format!("address '{url}' is not a usable URL: {why}"),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| unusable(e.to_string()))?;
        if parsed.host().is_none() {
            return Err(unusable("it names no host".into()));
        }
        let base = url.trim_end_matches('/');
        let endpoint = |path: &str| {
            reqwest::Url::parse(&format!("{base}{path}")).map_err(|e| unusable(e.to_string()))
        };
        Ok(NodeClient {
            id: id.to_string(),
            evaluate_url: endpoint("/v1/evaluate")?,
            budget_url: endpoint("/v1/budget")?,
            http,
            retry,
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> NodeError {
        if e.is_timeout() {
            NodeError::Timeout {
                node: self.id.clone(),
                seconds: self.retry.timeout.as_secs_f64(),
            }
        } else {
            NodeError::Connect {
                node: self.id.clone(),
                message: chain_message(&e),
            }
        }
    }

    async fn failure(&self, response: reqwest::Response) -> NodeError {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) if status < 500 => NodeError::Refused {
                node: self.id.clone(),
                status,
                error: body.error,
                message: body.message,
            },
            Ok(body) => NodeError::Server {
                node: self.id.clone(),
                status,
                message: body.message,
            },
            Err(_) if status < 500 => NodeError::Refused {
                node: self.id.clone(),
                status,
                error: "refused".into(),
                message: text,
            },
            Err(_) => NodeError::Server {
                node: self.id.clone(),
                status,
                message: text,
            },
        }
    }

    /// Retries transient failures with exponential backoff, up to the policy's attempts.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, NodeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, NodeError>>,
    {
        let mut backoff = self.retry.initial_backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Err(e) if e.is_transient() && tries < self.retry.attempts => {
                    tracing::warn!(node = %self.id, attempt = tries, error = %e, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                other => return other,
            }
        }
    }

    pub async fn evaluate(&self, request: &EvaluateRequest) -> Result<Answer, NodeError> {
        self.evaluate_raw(request).await.map(|(_, answer)| answer)
    }

    /// The answer as the node sent it (Arrow IPC bytes, kept verbatim by the run store) and decoded.
    pub async fn evaluate_raw(
        &self,
        request: &EvaluateRequest,
    ) -> Result<(Vec<u8>, Answer), NodeError> {
        let bytes = self.fetch_answer(request).await?;
        let answer = Answer::decode(&bytes).map_err(|e| NodeError::BadAnswer {
            node: self.id.clone(),
            message: e.to_string(),
        })?;
        if answer.meta.node_id != self.id {
            return Err(NodeError::BadAnswer {
                node: self.id.clone(),
                message: format!("answer is labelled as node {}", answer.meta.node_id),
            });
        }
        Ok((bytes.to_vec(), answer))
    }

    /// The answer's bytes, unread: the transport alone (the federation benchmark's baseline).
    pub async fn fetch_answer(
        &self,
        request: &EvaluateRequest,
    ) -> Result<axum::body::Bytes, NodeError> {
        self.with_retries(|| async {
            let response = self
                .http
                .post(self.evaluate_url.clone())
                .json(request)
                .send()
                .await
                .map_err(|e| self.transport_error(e))?;
            if !response.status().is_success() {
                return Err(self.failure(response).await);
            }
            response.bytes().await.map_err(|e| self.transport_error(e))
        })
        .await
    }

    pub async fn budget(&self) -> Result<BudgetStatus, NodeError> {
        self.with_retries(|| async {
            let response = self
                .http
                .get(self.budget_url.clone())
                .send()
                .await
                .map_err(|e| self.transport_error(e))?;
            if !response.status().is_success() {
                return Err(self.failure(response).await);
            }
            response.json().await.map_err(|e| NodeError::BadAnswer {
                node: self.id.clone(),
                message: e.to_string(),
            })
        })
        .await
    }
}
