//! `sv-train`: command-line front end of the sv-train library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sv-train", version, about = "Train and evaluate StreetVision roadwork heads on a frozen DINOv3")]
struct Cli {
    /// Experiment TOML to train (e.g. experiments/curriculum.toml).
    #[arg(long)]
    experiment: Option<PathBuf>,
    /// Override a value of the experiment: `--set train.lr=0.001 --set name=lr-1e-3`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train an experiment and write its run folder.
    Train {
        #[arg(long)]
        experiment: PathBuf,
        /// Override a value of the experiment (repeatable): `--set train.lr=0.001`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Run several experiments on the same data and seed and write a comparison table.
    Compare {
        /// Experiment TOMLs.
        #[arg(required_unless_present = "runs")]
        experiments: Vec<PathBuf>,
        /// Compare finished run folders instead of training (e.g. a sweep's runs from several
        /// workers: scripts/ray_sweep.py).
        #[arg(long, num_args = 1.., conflicts_with = "experiments")]
        runs: Vec<PathBuf>,
        /// Folder for the comparison (default: runs).
        #[arg(long, default_value = "runs")]
        out: PathBuf,
    },
    /// Evaluate a saved checkpoint on an experiment's data.
    Evaluate {
        #[arg(long)]
        experiment: PathBuf,
        /// A run's `checkpoint/` folder.
        #[arg(long)]
        checkpoint: PathBuf,
    },
    /// Calibrate INT8 on a diverse calibration set and compare FP32/FP16/BF16/INT8; writes <run>/int8/.
    Quantize {
        #[arg(long)]
        run: PathBuf,
        /// Calibrator kept for export: max, entropy, mse, percentile (99.99) or percentile:<p>.
        /// Default mse: on the procedural demo run it alone stayed within 1 point of FP32
        /// (see benchmarks/RESULTS.md); the report compares all four either way.
        #[arg(long, default_value = "mse")]
        calibrator: sv_train::quant::Calibrator,
        /// Calibration samples (diverse subset of the training split).
        #[arg(long, default_value_t = 512)]
        samples: usize,
        /// Validation samples challenged per variant by the simulator (0 = all).
        #[arg(long, default_value_t = 100)]
        sim_samples: usize,
        /// Fresh challenges every variant scores for its decision agreement with FP32 and |Δp|.
        #[arg(long, default_value_t = 2048)]
        fidelity_images: usize,
        /// Compare only these variants (comma-separated: fp32, fp16, bf16, int8-<calibrator>,
        /// and on the `tch` build tch-bf16, tch-fp8, tch-int8); all by default.
        #[arg(long, value_delimiter = ',')]
        variants: Vec<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Compare a shadow model (sv-miner --shadow) with the served one on a prediction log (a
    /// Lance log or the miner's segment folder): agreement, score shift, and the reward each
    /// would have earned where labels exist.
    ShadowReport {
        /// The prediction log.
        log: PathBuf,
        /// Also write shadow_report.{json,txt,png} here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Upload a bundle to a Hugging Face model repo (token from HF_TOKEN; HF_ENDPOINT for another
    /// Hub): checks the manifest, the card's hotkey and the 90-day life first, reads the card back.
    Publish {
        #[arg(long)]
        bundle: PathBuf,
        /// user/name
        #[arg(long)]
        repo: String,
        /// The miner's hotkey (SS58): the card's submitted_by must be it.
        #[arg(long)]
        hotkey: String,
        #[arg(long, default_value = "main")]
        revision: String,
        /// Commit message (default: Upload <model> (<version>)).
        #[arg(long)]
        message: Option<String>,
    },
    /// Export a run as a bundle that sv-infer / sv-miner serve.
    Export {
        #[arg(long)]
        run: PathBuf,
        /// Bundle folder to write.
        #[arg(long)]
        out: PathBuf,
        /// The miner's hotkey (SS58), recorded in model_card.json as submitted_by.
        #[arg(long)]
        hotkey: String,
        /// Export INT8 weights and activation scales (run `quantize` first).
        #[arg(long)]
        int8: bool,
        #[arg(long)]
        model_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Stage-1 early exits of the cascade (on the recalibrated score).
        #[arg(long, default_value_t = 0.15)]
        exit_low: f32,
        #[arg(long, default_value_t = 0.85)]
        exit_high: f32,
        /// Validation samples challenged per level to pick the decision point (0 = all).
        #[arg(long, default_value_t = 200)]
        sim_samples: usize,
        /// Replace an existing bundle folder.
        #[arg(long)]
        force: bool,
        /// Backbone float type of the bundle: f32, bf16 or f16 (cuda build). Default: the run's.
        #[arg(long)]
        dtype: Option<sv_train::backbone::FloatType>,
        /// Largest batch to warm up and carry kernel caches for (cuda build; the miner's
        /// `cascade.batch.max_batch`); 0 carries none.
        #[arg(long, default_value_t = 16)]
        warm_batch: usize,
    },
    /// Compute an experiment's feature cache ahead of training: in this process (only the rows
    /// without features), or one shard of the store's fragments (`--shard i/N`: data files
    /// written, nothing committed; the staged result goes to `--out` or stdout), or one commit
    /// of every shard's result (`--commit FILES...`). scripts/ray_extract.py runs the shards on Ray.
    Extract {
        /// The experiment (its [data].store, [backbone] and [preprocess]); optional with --commit.
        #[arg(long)]
        experiment: Option<PathBuf>,
        #[arg(long, conflicts_with = "commit")]
        shard: Option<sv_data::staged::Shard>,
        /// Where a shard writes what it staged (JSON; default stdout).
        #[arg(long, requires = "shard")]
        out: Option<PathBuf>,
        /// Staged shard files to commit, all shards of one extraction.
        #[arg(long, num_args = 1..)]
        commit: Vec<PathBuf>,
        /// Override a value of the experiment (as `train --set`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Ask an OpenAI-compatible VLM server (vLLM, SGLang) the cascade's question about every
    /// selected row and write `teacher_prob` (from the YES/NO log-probabilities where the server
    /// gives them), `teacher_model` and `teacher_error`; commits every --commit-every answers, and
    /// a rerun asks only the rows without an answer. Distillation reads the column
    /// (`[distill.teacher] column = "teacher_prob"`).
    Teach {
        #[arg(long)]
        store: PathBuf,
        /// Server base URL, e.g. http://127.0.0.1:8000.
        #[arg(long)]
        endpoint: String,
        /// Model name the server serves.
        #[arg(long)]
        model: String,
        /// Environment variable holding the server's bearer token, if it wants one.
        #[arg(long)]
        api_key_env: Option<String>,
        /// Lance SQL filter of the rows to teach, e.g. "source = 'live'" (default: all).
        #[arg(long)]
        filter: Option<String>,
        /// Ask again rows that already have a teacher_prob.
        #[arg(long)]
        redo: bool,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 256)]
        commit_every: usize,
        /// Tries of a request that fails in a retryable way (transport, timeout, 429, 5xx).
        #[arg(long, default_value_t = 4)]
        tries: u32,
        #[arg(long, default_value_t = 500)]
        backoff_ms: u64,
        #[arg(long, default_value_t = 60000)]
        timeout_ms: u64,
        /// top_logprobs asked for (0: do not ask; the answer text alone then gives 1 or 0).
        #[arg(long, default_value_t = 5)]
        top_logprobs: u32,
        /// Label unlabelled rows whose teacher P >= T as Roadwork and P <= 1 - T as None
        /// (label_source = teacher). Only answers with log-probabilities count, unless
        /// --label-from-text.
        #[arg(long)]
        label_above: Option<f32>,
        #[arg(long)]
        label_from_text: bool,
        #[arg(long)]
        json: bool,
    },
    /// The weekly loop: import the miner's prediction log, teach the new live rows, train the
    /// experiment, export a candidate, compare it with the serving bundle on the same test rows
    /// and simulated validator stream, and ship it (<out>/bundle) only if it wins by the margins;
    /// writes <out>/report.{md,json} and compare.png.
    Cycle {
        #[arg(long)]
        experiment: PathBuf,
        /// The bundle the miner serves now.
        #[arg(long)]
        serving: PathBuf,
        /// The miner's prediction log (segments folder or Lance log), imported first.
        #[arg(long)]
        log: Option<PathBuf>,
        /// OpenAI-compatible VLM server for the new rows (see `teach`).
        #[arg(long, requires = "teacher_model")]
        teacher: Option<String>,
        #[arg(long)]
        teacher_model: Option<String>,
        /// Teacher answers at or beyond this confidence label unlabelled live rows.
        #[arg(long, default_value_t = 0.9)]
        label_above: f32,
        #[arg(long)]
        out: PathBuf,
        /// The miner's hotkey (SS58), recorded in the candidate's card.
        #[arg(long)]
        hotkey: String,
        /// The candidate's simulated reward must beat the serving one's by at least this.
        #[arg(long, default_value_t = 0.0)]
        reward_margin: f64,
        /// ... and its clean test MCC may trail by at most this.
        #[arg(long, default_value_t = 0.02)]
        max_mcc_drop: f64,
        /// Challenges of the comparison's simulated stream (same for both models).
        #[arg(long, default_value_t = 1000)]
        sim_challenges: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Override a value of the experiment (as `train --set`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Make diffusion images as the validator does (natix's prompts from captions of stored
    /// images, SDXL t2i or i2i at strength 0.7) through OpenAI's images API or AUTOMATIC1111's,
    /// and store them as synthetic-t2i/-i2i rows; a rerun makes only the jobs not yet stored.
    Synth {
        #[arg(long)]
        store: PathBuf,
        /// Service base URL.
        #[arg(long)]
        endpoint: String,
        #[arg(long, value_enum)]
        api: sv_train::synth::ImageApi,
        #[arg(long, value_enum)]
        kind: sv_train::synth::Kind,
        /// Images in all for this seed (jobs already stored are skipped).
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Model name (OpenAI's API).
        #[arg(long)]
        model: Option<String>,
        /// Environment variable holding the service's bearer token.
        #[arg(long)]
        api_key_env: Option<String>,
        #[arg(long, default_value_t = 1024)]
        width: u32,
        #[arg(long, default_value_t = 1024)]
        height: u32,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 16)]
        commit_every: usize,
        /// Rows whose images and captions seed the prompts (Lance SQL; default: labelled,
        /// non-synthetic rows).
        #[arg(long)]
        source_filter: Option<String>,
        /// An OpenAI-compatible VLM server that captions the source images and rewrites the
        /// captions with natix's instructions (default: the stored description, templated).
        #[arg(long, requires = "captioner_model")]
        captioner: Option<String>,
        #[arg(long)]
        captioner_model: Option<String>,
        /// A run folder: target its misclassified rows (its predictions.csv).
        #[arg(long)]
        errors_of: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle and print its submission's age and days left of its 90-day life.
    Card { bundle: PathBuf },
    /// Nearest samples of the run's store to an image file, embedded with the run's backbone.
    Similar {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
}

fn main() {
    sv_data::progress::init_tracing("warn,sv_train=info,sv_data=info");
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// This binary's edge: a service's bearer token from the environment variable `--api-key-env` names.
fn api_key_from_env(var: Option<String>) -> Result<Option<String>> {
    var.map(|v| std::env::var(&v).with_context(|| format!("--api-key-env {v}: not set"))).transpose()
}

fn run(cli: Cli) -> Result<()> {
    // GPU builds keep CubeCL's compiled kernels and autotune results across runs, one folder a
    // GPU model and driver; export copies them into the bundle.
    // This binary's edge: `SV_KERNEL_CACHE` overrides the root.
    if sv_train::kernels::compiles_kernels() {
        let root = match std::env::var_os("SV_KERNEL_CACHE") {
            Some(p) => std::path::PathBuf::from(p),
            None => sv_train::kernels::default_root("sv-train")?,
        };
        match sv_train::kernels::init(&sv_train::kernels::gpu_dir(&root)) {
            Some((ptx, tune)) => tracing::info!("kernel caches in {} and {}", ptx.display(), tune.display()),
            None => tracing::warn!("CubeCL's PTX cache is off: kernels are compiled anew in every process"),
        }
    }
    let cmd = match (cli.cmd, cli.experiment) {
        (None, Some(experiment)) => Some(Cmd::Train { experiment, set: cli.set }),
        (Some(_), _) if !cli.set.is_empty() => {
            anyhow::bail!("--set before a subcommand applies to nothing: put it after `train`, `extract` or `cycle`")
        }
        (cmd, _) => cmd,
    };
    match cmd {
        Some(Cmd::Train { experiment, set }) => {
            let (mut exp, text) = sv_train::experiment::Experiment::load_with_overrides(&experiment, &set)?;
            // This binary's edge: `SV_*` variables may override the forward's settings.
            exp.backbone.forward = exp.backbone.forward.clone().with_env()?;
            sv_train::run::run_loaded(exp, &text)?;
        }
        Some(Cmd::Teach {
            store,
            endpoint,
            model,
            api_key_env,
            filter,
            redo,
            concurrency,
            commit_every,
            tries,
            backoff_ms,
            timeout_ms,
            top_logprobs,
            label_above,
            label_from_text,
            json,
        }) => {
            let mut cfg = sv_train::teach::TeachConfig::new(&endpoint, &model);
            cfg.api_key = api_key_from_env(api_key_env)?;
            cfg.filter = filter;
            cfg.redo = redo;
            cfg.concurrency = concurrency;
            cfg.commit_every = commit_every;
            cfg.tries = tries;
            cfg.backoff_ms = backoff_ms;
            cfg.timeout_ms = timeout_ms;
            cfg.top_logprobs = top_logprobs;
            cfg.label_above = label_above;
            cfg.label_from_text = label_from_text;
            cfg.validate()?;
            let mut st = sv_data::Store::open(&store)?;
            let r = sv_train::teach::teach(&mut st, &cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{r}");
                for e in &r.first_errors {
                    println!("  {e}");
                }
            }
        }
        Some(Cmd::Cycle {
            experiment,
            serving,
            log,
            teacher,
            teacher_model,
            label_above,
            out,
            hotkey,
            reward_margin,
            max_mcc_drop,
            sim_challenges,
            seed,
            set,
        }) => {
            let teacher = match (teacher, teacher_model) {
                (Some(url), Some(model)) => {
                    let mut t = sv_train::teach::TeachConfig::new(&url, &model);
                    t.label_above = Some(label_above);
                    t.validate()?;
                    Some(t)
                }
                _ => None,
            };
            let opts = sv_train::cycle::CycleOptions {
                experiment,
                overrides: set,
                serving,
                log,
                teacher,
                out: out.clone(),
                hotkey,
                gate: sv_train::cycle::Gate { reward_margin, max_mcc_drop },
                sim: sv_train::simulator::SimulatorConfig { challenges: sim_challenges, seed, ..Default::default() },
            };
            let r = sv_train::cycle::cycle(&opts)?;
            print!("{}", std::fs::read_to_string(out.join("report.md"))?);
            println!("{}: {}", if r.shipped { "shipped" } else { "not shipped" }, r.bundle.display());
        }
        Some(Cmd::Synth {
            store,
            endpoint,
            api,
            kind,
            count,
            seed,
            model,
            api_key_env,
            width,
            height,
            concurrency,
            commit_every,
            source_filter,
            captioner,
            captioner_model,
            errors_of,
            json,
        }) => {
            let mut cfg = sv_train::synth::SynthConfig::new(&endpoint, api, kind, count);
            cfg.api_key = api_key_from_env(api_key_env)?;
            cfg.seed = seed;
            cfg.model = model;
            cfg.width = width;
            cfg.height = height;
            cfg.concurrency = concurrency;
            cfg.commit_every = commit_every;
            cfg.source_filter = source_filter;
            cfg.captioner =
                captioner.zip(captioner_model).map(|(endpoint, model)| sv_train::synth::Captioner { endpoint, model });
            cfg.errors_of = errors_of;
            let mut st = sv_data::Store::open(&store)?;
            let r = sv_train::synth::synth(&mut st, &cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "made {} images ({} already stored, {} failed) in {:.1} s, {} commits, version {}",
                    r.made, r.already, r.failed, r.seconds, r.commits, r.version
                );
                for e in &r.first_errors {
                    println!("  {e}");
                }
            }
        }
        Some(Cmd::Compare { experiments, runs, out }) => {
            if runs.is_empty() {
                sv_train::evaluate::compare(&experiments, &out)?;
            } else {
                sv_train::evaluate::compare_runs(&runs, &out)?;
            }
        }
        Some(Cmd::Evaluate { experiment, checkpoint }) => {
            let e = sv_train::evaluate::evaluate_checkpoint(&experiment, &checkpoint)?;
            println!("dataset version {}", e.dataset_version);
            for (split, m) in &e.splits {
                println!("{split:>5}: {m}");
            }
            for (source, m) in &e.test_by_source {
                println!("test {source}: {m}");
            }
            if let Some(sim) = &e.simulator {
                println!(
                    "simulated reward: per window {:.4} ± {:.4}, validator EMA {:.4}",
                    sim.reward_mean, sim.reward_sd, sim.ema_score
                );
            }
            println!("{}", serde_json::to_string_pretty(&e)?);
        }
        Some(Cmd::Quantize { run, calibrator, samples, sim_samples, fidelity_images, variants, seed }) => {
            // The run's forward with this machine's `SV_*` overrides (e.g. SV_TCH_DEVICE=auto for a
            // run trained on LibTorch's CPU, quantised on a GPU).
            let forward = sv_train::checkpoint::read_meta(&run.join("checkpoint"))?.backbone.forward.with_env()?;
            let opts = sv_train::quant::report::QuantizeOptions {
                forward: Some(forward),
                calibrator,
                samples,
                sim_samples,
                fidelity_images,
                variants,
                seed,
                ..Default::default()
            };
            let r = sv_train::quant::report::quantize(&run, &opts)?;
            print!("{}", std::fs::read_to_string(run.join("int8/report.md"))?);
            println!("scales: {}", r.run.join("int8/scales.json").display());
        }
        Some(Cmd::Export {
            run,
            out,
            hotkey,
            int8,
            model_name,
            description,
            exit_low,
            exit_high,
            sim_samples,
            force,
            dtype,
            warm_batch,
        }) => {
            let r = sv_train::export::export(&sv_train::export::ExportOptions {
                run,
                out,
                hotkey,
                int8,
                model_name,
                description,
                exits: sv_train::export::Exits { low: exit_low, high: exit_high },
                sim_samples,
                force,
                dtype,
                warm_batch,
                seed: 0,
            })?;
            println!(
                "bundle {} written: {} files, {} bytes, {:.1}s; decision threshold {:.4} (simulated reward {:.4} -> {:.4})",
                r.bundle.display(),
                r.files,
                r.bytes,
                r.seconds,
                r.decision.map.threshold,
                r.decision.reward_before,
                r.decision.reward_after
            );
        }
        Some(Cmd::Publish { bundle, repo, hotkey, revision, message }) => {
            // This binary's edge: the token and the Hub's address come from the environment, as
            // huggingface_hub reads them.
            let token = std::env::var("HF_TOKEN").map_err(|_| {
                anyhow::anyhow!("HF_TOKEN is not set: a write token from huggingface.co/settings/tokens")
            })?;
            let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
            let r = sv_train::publish::publish(&sv_train::publish::PublishOptions {
                bundle,
                repo,
                hotkey,
                endpoint,
                token,
                revision,
                message,
                now: chrono::Utc::now().timestamp(),
            })?;
            match &r.commit {
                Some(c) => println!(
                    "published {} files to {} (commit {c}; {} through LFS, {} bytes uploaded, {} unchanged); model_card.json read back",
                    r.files, r.repo, r.lfs_files, r.uploaded_bytes, r.unchanged
                ),
                None => println!("{} already holds all {} files: nothing to commit", r.repo, r.files),
            }
        }
        Some(Cmd::ShadowReport { log, out }) => {
            let r = sv_train::shadow::report(&log, &sv_train::simulator::SimulatorConfig::default())?;
            print!("{}", r.render());
            if let Some(dir) = out {
                r.write(&dir)?;
                println!("written to {}", dir.display());
            }
        }
        Some(Cmd::Extract { experiment, shard, out, commit, set }) => {
            let exp = match &experiment {
                Some(p) => Some(sv_train::experiment::Experiment::load_with_overrides(p, &set)?.0),
                None => None,
            };
            if !commit.is_empty() {
                let r = sv_train::extract::commit(&commit, exp.as_ref().map(|e| e.data.store.as_path()))?;
                println!(
                    "committed column {} of {} shards ({} rows) to {} as version {} (cache key recorded in version {})",
                    r.column, r.shards, r.rows, r.store, r.data_version, r.version
                );
                return Ok(());
            }
            let Some(exp) = exp else { anyhow::bail!("extract needs --experiment (or --commit FILES)") };
            match shard {
                Some(shard) => {
                    let staged = sv_train::extract::extract_shard(&exp, shard)?;
                    let json = serde_json::to_string_pretty(&staged)?;
                    eprintln!(
                        "shard {shard}: {} fragments, {} rows of column {} staged on version {} (not committed)",
                        staged.fragments.len(),
                        staged.rows,
                        staged.column,
                        staged.read_version
                    );
                    match out {
                        Some(path) => {
                            let tmp = path.with_extension("tmp");
                            std::fs::write(&tmp, json).with_context(|| format!("cannot write {}", tmp.display()))?;
                            std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
                        }
                        None => println!("{json}"),
                    }
                }
                None => {
                    let r = sv_train::extract::extract_all(&exp)?;
                    println!(
                        "features: {} reused, {} computed (column {}, version {})",
                        r.reused, r.computed, r.column, r.version
                    );
                }
            }
        }
        Some(Cmd::Card { bundle }) => {
            print!("{}", sv_train::export::describe(&bundle, chrono::Utc::now().timestamp())?);
        }
        Some(Cmd::Similar { run, image, k }) => {
            let device = sv_train::Device::default();
            let (model, meta) = sv_train::checkpoint::classifier_of_run(&run, &device)?;
            let bytes = std::fs::read(&image).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", image.display()))?;
            let x = sv_train::backbone::pixels::<sv_train::InferBackend>(&[&bytes], &model.preprocess, &device)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", image.display()))?;
            let q = sv_train::backbone::host(model.backbone.forward(x).features);
            let store = sv_train::quant::report::run_store(&meta)?;
            for n in sv_data::similar::similar_to_vector(&store, &meta.feature_column, &q, k)? {
                println!("{}  {:.4}", n.id, n.distance);
            }
        }
        None => {
            anyhow::bail!("nothing to do: pass --experiment <toml>, or a subcommand (see --help)");
        }
    }
    Ok(())
}
