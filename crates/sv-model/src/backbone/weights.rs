//! Named tensors for model loading: safetensors checkpoints (single file or sharded with
//! `model.safetensors.index.json`) and seeded random weights that stand in for a checkpoint.
//!
//! Models ask for tensors by their checkpoint name and expected shape; a missing tensor or a
//! shape mismatch is an error naming the tensor, the file and both shapes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::{FloatType, NamedTensor};

/// A source of named f32 tensors.
pub trait TensorSource {
    /// The tensor `name` as f32 values in row-major order, checked against `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// All tensor names.
    fn names(&self) -> Vec<String>;
    /// Human-readable origin, for error messages.
    fn origin(&self) -> String;
}

/// Tensors read from safetensors files, memory-mapped: a checkpoint is not copied into memory,
/// and each tensor's pages are read from its shard only when the tensor is converted.
pub struct SafetensorsSource {
    dir: PathBuf,
    /// File name → mapped bytes.
    files: HashMap<String, memmap2::Mmap>,
    /// Tensor name → file name.
    index: BTreeMap<String, String>,
}

impl SafetensorsSource {
    /// Open one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let f = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let mut out = Self { dir, files: HashMap::new(), index: BTreeMap::new() };
        out.add(f)?;
        Ok(out)
    }

    fn add(&mut self, f: String) -> Result<()> {
        let path = self.dir.join(&f);
        let file = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        // SAFETY: the mapping is read-only and lives as long as this source; a checkpoint being
        // rewritten while a model loads from it is outside what this loader supports (bundles
        // are verified by their manifest before loading).
        let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
        for name in st.names() {
            self.index.insert(name.to_string(), f.clone());
        }
        self.files.insert(f, bytes);
        Ok(())
    }

    /// Open `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let files = shard_files(dir)?;
        let mut out = Self { dir: dir.to_path_buf(), files: HashMap::new(), index: BTreeMap::new() };
        for f in files {
            out.add(f)?;
        }
        Ok(out)
    }
}

/// The safetensors files of a Hugging Face model folder, in name order: `model.safetensors`, or
/// the shards its `model.safetensors.index.json` names.
pub fn shard_files(dir: &Path) -> Result<Vec<String>> {
    let single = dir.join("model.safetensors");
    let index_path = dir.join("model.safetensors.index.json");
    if single.exists() {
        return Ok(vec!["model.safetensors".into()]);
    }
    if !index_path.exists() {
        bail!("{} holds neither model.safetensors nor model.safetensors.index.json", dir.display());
    }
    let text = std::fs::read_to_string(&index_path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index_path.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{} has no `weight_map`", index_path.display()))?;
    let mut fs = Vec::with_capacity(map.len());
    for (k, f) in map {
        let f = f.as_str().ok_or_else(|| anyhow!("{}: weight_map[{k}] is not a string", index_path.display()))?;
        fs.push(f.to_string());
    }
    fs.sort();
    fs.dedup();
    Ok(fs)
}

fn to_f32(dtype: Dtype, data: &[u8], name: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        other => bail!("tensor {name} has dtype {other:?}; only f32/f16/bf16/f64 weights are supported"),
    })
}

impl TensorSource for SafetensorsSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let file = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("tensor {name:?} is missing from the checkpoint in {}", self.dir.display()))?;
        let st = SafeTensors::deserialize(&self.files[file]).expect("validated on open");
        let view = st.tensor(name).map_err(|e| anyhow!("{name}: {e}"))?;
        if view.shape() != shape {
            bail!(
                "tensor {name:?} in {} has shape {:?}, the config needs {:?} (wrong checkpoint for this config.json?)",
                self.dir.join(file).display(),
                view.shape(),
                shape
            );
        }
        if view.dtype() == Dtype::I8 {
            // Per-output-channel INT8 weights (export bundles): `{name}_scale` holds one f32 per row.
            let rows = shape.first().copied().unwrap_or(1);
            let scale = self.tensor(&format!("{name}_scale"), &[rows])?;
            let q: Vec<i8> = view.data().iter().map(|b| *b as i8).collect();
            return Ok(crate::int8::dequantize_rows(&q, &scale));
        }
        to_f32(view.dtype(), view.data(), name)
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn origin(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Seeded random weights: every tensor a model asks for is drawn on request (norm weights 1,
/// biases 0, layer scales `layer_scale`, everything else N(0, std²)). Deterministic per
/// (seed, name), whatever the order of requests.
pub struct RandomSource {
    pub seed: u64,
    pub std: f32,
    pub layer_scale: f32,
}

fn hash(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl TensorSource for RandomSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        use rand::{RngExt, SeedableRng};
        let n: usize = shape.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let is_norm = name.contains("norm");
        Ok(if leaf == "bias" || name.ends_with("mask_token") {
            vec![0.0; n]
        } else if is_norm && leaf == "weight" {
            vec![1.0; n]
        } else if leaf == "lambda1" {
            vec![self.layer_scale; n]
        } else {
            let mut rng = rand::rngs::StdRng::seed_from_u64(hash(self.seed, name));
            (0..n)
                .map(|_| {
                    // Box-Muller.
                    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                    let u2: f32 = rng.random();
                    self.std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
                })
                .collect()
        })
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    fn origin(&self) -> String {
        format!("random weights (seed {})", self.seed)
    }
}

/// Tensors held in memory (a model's own [`NamedTensor`]s, e.g. rounded to a lower precision).
pub struct MemorySource {
    tensors: HashMap<String, NamedTensor>,
    origin: String,
}

impl MemorySource {
    pub fn new(tensors: Vec<NamedTensor>, origin: &str) -> Self {
        Self { tensors: tensors.into_iter().map(|t| (t.name.clone(), t)).collect(), origin: origin.to_string() }
    }
}

impl TensorSource for MemorySource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensors.get(name).ok_or_else(|| anyhow!("tensor {name:?} is missing from {}", self.origin))?;
        if t.shape != shape {
            bail!("tensor {name:?} in {} has shape {:?}, expected {:?}", self.origin, t.shape, shape);
        }
        Ok(t.values.clone())
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }
    fn origin(&self) -> String {
        self.origin.clone()
    }
}

/// A tensor to write: f32 values, values in a 16-bit float type, or per-row INT8 values with
/// their f32 scales (written as `{name}` in I8 and `{name}_scale`).
pub enum Stored {
    F32(NamedTensor),
    /// Written as `half` (BF16 or F16); the values are already rounded to it (what loads back).
    Half {
        tensor: NamedTensor,
        half: HalfType,
    },
    Int8 {
        name: String,
        shape: Vec<usize>,
        q: Vec<i8>,
        scale: Vec<f32>,
    },
}

/// The 16-bit float types a tensor is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfType {
    Bf16,
    F16,
}

impl HalfType {
    /// The half type of a float type; `None` for f32.
    pub fn of(float: FloatType) -> Option<Self> {
        match float {
            FloatType::F32 => None,
            FloatType::Bf16 => Some(Self::Bf16),
            FloatType::F16 => Some(Self::F16),
        }
    }

    /// `v` rounded to this type (to nearest, ties to even), as f32.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Self::Bf16 => bf16::from_f32(v).to_f32(),
            Self::F16 => f16::from_f32(v).to_f32(),
        }
    }

    fn bytes(self, v: f32) -> [u8; 2] {
        match self {
            Self::Bf16 => bf16::from_f32(v).to_le_bytes(),
            Self::F16 => f16::from_f32(v).to_le_bytes(),
        }
    }

    fn dtype(self) -> Dtype {
        match self {
            Self::Bf16 => Dtype::BF16,
            Self::F16 => Dtype::F16,
        }
    }
}

impl Stored {
    /// This tensor in `half` when it is f32 (its values rounded); INT8 and half ones unchanged.
    pub fn into_half(self, half: HalfType) -> Self {
        match self {
            Self::F32(mut tensor) => {
                tensor.values.iter_mut().for_each(|v| *v = half.round(*v));
                Self::Half { tensor, half }
            }
            other => other,
        }
    }

    /// Bytes its values take in the file (an INT8 tensor's scales included).
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(t) => 4 * t.values.len(),
            Self::Half { tensor, .. } => 2 * tensor.values.len(),
            Self::Int8 { q, scale, .. } => q.len() + 4 * scale.len(),
        }
    }
}

/// Write tensors to one safetensors file (with `metadata` in its header).
pub fn write_safetensors(path: &Path, tensors: &[Stored], metadata: Option<HashMap<String, String>>) -> Result<()> {
    use safetensors::tensor::TensorView;
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in tensors {
        match t {
            Stored::F32(t) => buffers.push((
                t.name.clone(),
                Dtype::F32,
                t.shape.clone(),
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )),
            Stored::Half { tensor: t, half } => buffers.push((
                t.name.clone(),
                half.dtype(),
                t.shape.clone(),
                t.values.iter().flat_map(|v| half.bytes(*v)).collect(),
            )),
            Stored::Int8 { name, shape, q, scale } => {
                buffers.push((name.clone(), Dtype::I8, shape.clone(), q.iter().map(|v| *v as u8).collect()));
                buffers.push((
                    format!("{name}_scale"),
                    Dtype::F32,
                    vec![scale.len()],
                    scale.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
            }
        }
    }
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b).map_err(|e| anyhow!("tensor {n}: {e}"))?)))
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, metadata, path)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder's shards come from `model.safetensors`, or its index's weight map (each file
    /// once, in name order); a folder with neither, or an index without a map, is an error naming it.
    #[test]
    fn shard_files_read_a_single_file_or_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let e = shard_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("neither model.safetensors nor"), "{e}");
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, r#"{"metadata": {}}"#).unwrap();
        assert!(shard_files(dir.path()).unwrap_err().to_string().contains("weight_map"));
        std::fs::write(
            &index,
            r#"{"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            shard_files(dir.path()).unwrap(),
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        );
        std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
        assert_eq!(shard_files(dir.path()).unwrap(), ["model.safetensors"]);
    }

    /// Half tensors are written in their type (2 bytes a value, the file's dtype BF16/F16) and
    /// load back as exactly the rounded values kept in memory; f32 and INT8 tensors beside them
    /// are unchanged.
    #[test]
    fn half_tensors_round_trip_in_their_type() {
        let dir = tempfile::tempdir().unwrap();
        // Values with more mantissa than either half type keeps, one beyond f16's range.
        let values: Vec<f32> =
            (0..64).map(|i| (i as f32 - 31.7) * 0.013_579 + if i == 5 { 70_000.0 } else { 0.0 }).collect();
        let t = |name: &str| NamedTensor { name: name.into(), shape: vec![8, 8], values: values.clone() };
        for half in [HalfType::Bf16, HalfType::F16] {
            let stored = vec![
                Stored::F32(t("a")).into_half(half),
                Stored::F32(t("b")),
                Stored::Int8 { name: "c".into(), shape: vec![2, 2], q: vec![1, -2, 3, -4], scale: vec![0.5, 0.25] },
            ];
            let Stored::Half { tensor: rounded, .. } = &stored[0] else { panic!("not half") };
            assert!(rounded.values.iter().zip(&values).any(|(r, v)| r != v), "{half:?} rounded nothing");
            assert_eq!(stored[0].bytes(), 128);
            let path = dir.path().join(format!("{half:?}.safetensors"));
            write_safetensors(&path, &stored, None).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.tensor("a").unwrap().dtype(), half.dtype());
            assert_eq!(st.tensor("a").unwrap().data().len(), 128);
            let src = SafetensorsSource::open_file(&path).unwrap();
            assert_eq!(src.tensor("a", &[8, 8]).unwrap(), rounded.values);
            assert_eq!(src.tensor("b", &[8, 8]).unwrap(), values);
            assert_eq!(src.tensor("c", &[2, 2]).unwrap(), [0.5, -1.0, 0.75, -1.0]);
            if half == HalfType::F16 {
                assert!(src.tensor("a", &[8, 8]).unwrap()[5].is_infinite(), "70,000 is past f16's range");
            }
        }
    }
}
