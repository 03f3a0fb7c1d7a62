//! Registration with NATIX, as `register.sh` of `natixnetwork/streetvision-subnet` does it: a
//! fresh Unix timestamp signed with the hotkey (as `btcli wallet sign --use-hotkey` signs it),
//! POSTed as `{uid, message, natix_public_key, natix_signature, type: "miner", model_repo}` (the
//! uid as a string, as `jq --arg` writes it) to `<base>/participants/register`, then
//! `<base>/participants/registration-status/<uid>` polled until its `status` is final
//! (`succeeded`/`success` or `failed`/`error`) or the timeout passes.

use std::time::Duration;

use serde_json::Value;

use crate::wallet::Hotkey;

/// NATIX's endpoint (`register.sh`'s default `BASE_URL`).
pub const DEFAULT_BASE: &str = "https://hydra.natix.network";

/// The body `register.sh` POSTs for a miner.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    pub uid: String,
    pub message: String,
    pub natix_public_key: String,
    pub natix_signature: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub model_repo: String,
}

/// The registration body for this hotkey's miner `uid` serving `model_repo`, signed now (`now`:
/// Unix seconds).
pub fn registration(hotkey: &Hotkey, uid: u16, model_repo: &str, now: i64) -> Registration {
    let message = now.to_string();
    Registration {
        uid: uid.to_string(),
        natix_signature: hotkey.sign_message(&message),
        message,
        natix_public_key: hotkey.ss58().to_string(),
        kind: "miner".into(),
        model_repo: model_repo.to_string(),
    }
}

/// How a registration ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    Failed { reason: String, status: Value },
    TimedOut { last: Option<Value> },
}

/// Why it could not be sent or read.
#[derive(Debug, thiserror::Error)]
pub enum NatixError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered HTTP {status} with something that is not JSON: {body}")]
    NotJson { url: String, status: u16, body: String },
}

async fn json_of(resp: reqwest::Response, url: &str) -> Result<(u16, Value), NatixError> {
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| NatixError::Http { url: url.into(), reason: e.to_string() })?;
    serde_json::from_str(&body).map(|v| (status, v)).map_err(|_| NatixError::NotJson {
        url: url.into(),
        status,
        body: body.chars().take(300).collect(),
    })
}

/// POST the registration; returns the server's answer (its `detail`, if any, says what happened).
pub async fn submit(client: &reqwest::Client, base: &str, reg: &Registration) -> Result<(u16, Value), NatixError> {
    let url = format!("{}/participants/register", base.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .json(reg)
        .send()
        .await
        .map_err(|e| NatixError::Http { url: url.clone(), reason: e.to_string() })?;
    json_of(resp, &url).await
}

/// Poll the registration status of `uid` every `every` until it is final or `timeout` passes;
/// `progress` sees each status.
pub async fn wait(
    client: &reqwest::Client,
    base: &str,
    uid: u16,
    every: Duration,
    timeout: Duration,
    mut progress: impl FnMut(&Value),
) -> Result<Outcome, NatixError> {
    let url = format!("{}/participants/registration-status/{uid}", base.trim_end_matches('/'));
    let until = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let answer = match client.get(&url).send().await {
            Ok(resp) => json_of(resp, &url).await.ok().map(|(_, v)| v),
            Err(e) => {
                tracing::warn!("{url}: {e}");
                None
            }
        };
        if let Some(v) = answer {
            progress(&v);
            match v.get("status").and_then(Value::as_str).unwrap_or("") {
                "succeeded" | "success" => return Ok(Outcome::Succeeded(v)),
                "failed" | "error" => {
                    let reason = v.get("error_message").and_then(Value::as_str).unwrap_or("").to_string();
                    return Ok(Outcome::Failed { reason, status: v });
                }
                _ => last = Some(v),
            }
        }
        if tokio::time::Instant::now() + every > until {
            return Ok(Outcome::TimedOut { last });
        }
        tokio::time::sleep(every).await;
    }
}
