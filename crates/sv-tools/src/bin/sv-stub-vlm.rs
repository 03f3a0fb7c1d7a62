//! `sv-stub-vlm`: a stand-in for a VLM behind vLLM's OpenAI-compatible API
//! ([`sv_train::stub`]: vLLM's answer and error shapes, first-token `top_logprobs`), for CI and
//! demos of `sv-train teach` and `sv-train cycle` where no real model can be downloaded.
//!
//! Its "vision" is a colour rule that fits the procedural demo data: P(roadwork) rises with the
//! share of traffic-cone orange in the image (a saturated orange: R > 180, 70 < G < 170,
//! B < 90), from 0.03 with none to 0.97 at 1% of the pixels or more. It is a teacher with
//! errors of its own (orange cars, dusk light), as a real one has. It also answers the image
//! APIs of a diffusion service (OpenAI's and AUTOMATIC1111's) with small generated PNGs, for
//! `sv-train synth`.

use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use sv_train::stub::{Reply, Stub};

#[derive(Parser)]
#[command(name = "sv-stub-vlm", about = "A local stand-in for a VLM served by vLLM's OpenAI API")]
struct Cli {
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Answer without log-probabilities (as a server that ignores `logprobs`).
    #[arg(long)]
    no_logprobs: bool,
}

/// P(roadwork) by the share of cone-orange pixels.
fn orange_probability(image: &[u8]) -> Option<f32> {
    let img = image::load_from_memory(image).ok()?.to_rgb8();
    let n = (img.width() * img.height()).max(1) as f32;
    let orange = img.pixels().filter(|p| p[0] > 180 && p[1] > 70 && p[1] < 170 && p[2] < 90).count() as f32;
    let share = orange / n;
    Some(0.03 + 0.94 * (share / 0.01).min(1.0))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let logprobs = !cli.no_logprobs;
    let stub = Stub::start(
        cli.port,
        Arc::new(move |img: &[u8], _| match orange_probability(img) {
            Some(p) => Reply::Answer { p, logprobs },
            // The image routes (and chats without an image) carry no image to look at.
            None if img.is_empty() => Reply::Answer { p: 0.5, logprobs },
            None => Reply::Status(400),
        }),
    )?;
    println!("sv-stub-vlm listening on {}", stub.url());
    loop {
        std::thread::park();
    }
}
