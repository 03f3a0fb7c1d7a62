//! Stages 2 and 3: models behind OpenAI-compatible chat-completions endpoints (vLLM serving a
//! Qwen-VL model, or any captioning/OCR model served the same way).
//!
//! - Stage 2 asks the VLM the YES/NO question of the spec and maps `YES` → 1, `NO` → 0; any
//!   other answer is an error (the earlier answer then stands).
//! - Stage 3 asks for a caption with all visible text and applies keyword rules: positive words
//!   (cone, barrier, construction, excavator, worker, caution, detour, road work) against
//!   negative ones (end, ends, closed, complete, finished — "END ROAD WORK" means it is over):
//!   positives only → 0.9, positives and negatives → 0.35, negatives only → 0.1, none → 0.2.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;

pub use sv_core::vlm::{VLM_PROMPT, parse_yes_no};
/// The stage-3 request.
pub const CAPTION_PROMPT: &str = "Describe this street image in one sentence and transcribe any text on signs.";

pub const POSITIVE_WORDS: [&str; 8] =
    ["cone", "barrier", "construction", "excavator", "worker", "caution", "detour", "road work"];
pub const NEGATIVE_WORDS: [&str; 5] = ["end", "ends", "closed", "complete", "finished"];

/// One OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000` (`/v1/chat/completions` is appended).
    pub url: String,
    /// Model name the server expects.
    pub model: String,
    /// Deadline of this stage in milliseconds.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// Bearer token, if the server wants one.
    #[serde(default)]
    pub api_key: Option<String>,
}

fn default_deadline() -> u64 {
    2500
}

/// A client of one endpoint.
#[derive(Clone)]
pub struct Endpoint {
    pub cfg: EndpointConfig,
    http: reqwest::Client,
}

impl Endpoint {
    pub fn new(cfg: EndpointConfig) -> Result<Self> {
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            bail!("endpoint url {:?} must start with http:// or https://", cfg.url);
        }
        let http = reqwest::Client::builder().build().context("cannot build the HTTP client")?;
        Ok(Self { cfg, http })
    }

    /// The assistant's text for `prompt` about a JPEG/PNG image, within the endpoint's deadline
    /// (an answer that takes longer is the error `late (deadline N ms)`).
    pub async fn ask(&self, prompt: &str, image: &[u8], max_tokens: u32) -> Result<String> {
        let deadline = Duration::from_millis(self.cfg.deadline_ms);
        tokio::time::timeout(deadline, self.request(prompt, image, max_tokens))
            .await
            .map_err(|_| anyhow!("late (deadline {} ms)", self.cfg.deadline_ms))?
    }

    async fn request(&self, prompt: &str, image: &[u8], max_tokens: u32) -> Result<String> {
        let mime = if image.starts_with(b"\x89PNG") { "image/png" } else { "image/jpeg" };
        let data = base64::engine::general_purpose::STANDARD.encode(image);
        let body = serde_json::json!({
            "model": self.cfg.model,
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{data}")}}
                ]
            }]
        });
        let url = format!("{}/v1/chat/completions", self.cfg.url.trim_end_matches('/'));
        let mut req = self.http.post(&url).json(&body);
        if let Some(k) = &self.cfg.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.with_context(|| format!("request to {url} failed"))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("cannot read the answer of {url}"))?;
        if !status.is_success() {
            bail!("{url} answered {status}: {}", text.chars().take(200).collect::<String>());
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{url} answered non-JSON ({e}): {}", text.chars().take(120).collect::<String>()))?;
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{url} answered without choices[0].message.content"))
    }
}

/// Stage 3's probability from a caption, by the keyword rules.
pub fn keyword_score(caption: &str) -> f32 {
    let text = caption.to_lowercase();
    let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let pos = POSITIVE_WORDS
        .iter()
        .any(|k| if k.contains(' ') { text.contains(k) } else { words.iter().any(|w| w.starts_with(k)) });
    let neg = NEGATIVE_WORDS.iter().any(|k| words.contains(k));
    match (pos, neg) {
        (true, false) => 0.9,
        (true, true) => 0.35,
        (false, true) => 0.1,
        (false, false) => 0.2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_keywords() {
        assert_eq!(parse_yes_no(" Yes.").unwrap(), 1.0);
        assert_eq!(parse_yes_no("NO").unwrap(), 0.0);
        assert!(parse_yes_no("maybe").is_err());
        assert_eq!(keyword_score("Orange cones and a ROAD WORK AHEAD sign"), 0.9);
        assert_eq!(keyword_score("A sign reading END ROAD WORK"), 0.35);
        assert_eq!(keyword_score("The shop is closed"), 0.1);
        assert_eq!(keyword_score("A quiet residential street"), 0.2);
        assert_eq!(keyword_score("Workers in vests"), 0.9);
    }
}
