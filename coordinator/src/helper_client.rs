//! The coordinator's side of mutual TLS toward the helper: it presents the coordinator
//! certificate and accepts the helper only when its certificate chains to the federation CA and
//! names `helper.stroom`. Requests are retried on transport failures (the helper answers a
//! repeated request the same way: verified reports and collections are stored).

use crate::node_client::{RetryPolicy, TlsMaterial};
use policies::wire::ErrorBody;
use secagg::api::{
    AGGREGATE_PATH, AggregateRequest, AggregateResponse, COLLECT_PATH, CollectRequest,
    CollectResponse, HPKE_KEYS_PATH, HpkeKeys,
};

/// The DNS name the helper's certificate must carry.
pub const HELPER_DNS_NAME: &str = "helper.stroom";

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("helper at {url}: cannot connect or complete the TLS handshake: {message}")]
    Connect { url: String, message: String },
    #[error("helper refused ({status}): {error}: {message}")]
    Refused {
        status: u16,
        error: String,
        message: String,
    },
    #[error("helper sent an unreadable answer: {0}")]
    BadAnswer(String),
}

#[derive(Debug, Clone)]
pub struct HelperClient {
    pub url: String,
    aggregate_url: reqwest::Url,
    collect_url: reqwest::Url,
    keys_url: reqwest::Url,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl HelperClient {
    pub fn new(url: &str, tls: &TlsMaterial, retry: RetryPolicy) -> Result<Self, HelperError> {
        let connect = |message: String| HelperError::Connect {
            url: url.to_string(),
            message,
        };
        let http = tls
            .client(HELPER_DNS_NAME, retry.timeout)
            .map_err(connect)?;
        let base = url.trim_end_matches('/');
        let endpoint = |path: &str| {
            reqwest::Url::parse(&format!("{base}{path}"))
                .map_err(|e| connect(format!("'{url}' is not a usable URL: {e}")))
        };
        Ok(HelperClient {
            url: url.to_string(),
            aggregate_url: endpoint(AGGREGATE_PATH)?,
            collect_url: endpoint(COLLECT_PATH)?,
            keys_url: endpoint(HPKE_KEYS_PATH)?,
            http,
            retry,
        })
    }

    /// A POST with `body`, or a GET without.
    async fn post<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
        &self,
        url: &reqwest::Url,
        body: Option<&Q>,
    ) -> Result<A, HelperError> {
        let mut backoff = self.retry.initial_backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            let request = match body {
                Some(body) => self.http.post(url.clone()).json(body),
                None => self.http.get(url.clone()),
            };
            let sent = request.send().await;
            let response = match sent {
                Ok(r) => r,
                Err(e) if tries < self.retry.attempts => {
                    tracing::warn!(helper = %self.url, attempt = tries, error = %e, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    continue;
                }
                Err(e) => {
                    return Err(HelperError::Connect {
                        url: self.url.clone(),
                        message: crate::node_client::chain_message(&e),
                    });
                }
            };
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| HelperError::BadAnswer(e.to_string()))?;
            if !status.is_success() {
                let body: ErrorBody = serde_json::from_str(&text).unwrap_or(ErrorBody {
                    error: "error".into(),
                    message: text,
                });
                return Err(HelperError::Refused {
                    status: status.as_u16(),
                    error: body.error,
                    message: body.message,
                });
            }
            return serde_json::from_str(&text).map_err(|e| HelperError::BadAnswer(e.to_string()));
        }
    }

    pub async fn aggregate(
        &self,
        req: &AggregateRequest,
    ) -> Result<AggregateResponse, HelperError> {
        self.post(&self.aggregate_url, Some(req)).await
    }

    pub async fn collect(&self, req: &CollectRequest) -> Result<CollectResponse, HelperError> {
        self.post(&self.collect_url, Some(req)).await
    }

    /// The helper's keys: nodes are asked to seal to the current one.
    pub async fn hpke_keys(&self) -> Result<HpkeKeys, HelperError> {
        self.post(&self.keys_url, None::<&()>).await
    }
}
