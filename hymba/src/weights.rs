//! Hugging Face checkpoint interop: load and save a directory laid out like
//! `nvidia/Hymba-1.5B-Base` — `config.json` (HF keys), safetensors weights under the
//! reference's tensor names (spec §5) and, optionally, `tokenizer.json`.
//!
//! ```text
//! dir/
//!   config.json
//!   model.safetensors                      (one file), or
//!   model.safetensors.index.json           {"weight_map": {tensor name: shard file}}
//!   model-00001-of-00002.safetensors …     (sharded)
//!   tokenizer.json                         (optional)
//! ```
//!
//! Names are translated by one table, [`MODEL_TENSORS`] + [`LAYER_TENSORS`] (our module path
//! → HF name), in the style of nanoGPT's `from_pretrained`. Parameters are found by their
//! module *path* (a burn [`ModuleMapper`] / [`ModuleVisitor`] that tracks
//! `enter_module`/`exit_module`), never by their order. Every tensor's shape is checked
//! against the config before a model is built, and every problem — missing, unexpected,
//! wrong shape, non-float dtype, a `kv_reuse_group` that disagrees with the `in_proj` row
//! counts — is reported by name in one [`HymbaError::Weights`].
//!
//! Our `Linear` already stores weights `[out, in]` like PyTorch and the conv taps are
//! `[d_inner, 1, d_conv]` like HF's `Conv1d`, so no tensor is transposed. Files are
//! memory-mapped; BF16, F16, F32 (and F64) tensors are read into the model's float type. The
//! tied `lm_head.weight` may be present (its shape must be the embedding's) but is never
//! written: the reference ties it to `model.embed_tokens.weight` on load.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView, View};
use serde::{Deserialize, Serialize};

use crate::HymbaBackend;
use crate::config::{HymbaConfig, KvRole};
use crate::error::{HymbaError, Result};
use crate::model::Hymba;

/// The architecture file.
pub const CONFIG_FILE: &str = "config.json";
/// The weights when they fit in one file.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint: `{"weight_map": {tensor name: file name}}`.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The tokenizer, copied next to the weights by [`save_pretrained`].
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tied LM head: optional on load, never written.
pub const LM_HEAD: &str = "lm_head.weight";

/// An HF tensor name and its shape.
pub type TensorSpec = (String, Vec<usize>);

/// Shape of a tensor under a config (and a layer index, for per-layer tensors); `None` when
/// the config has no such tensor (no conv bias, no meta tokens).
type ShapeFn = fn(&HymbaConfig, usize) -> Option<Vec<usize>>;

/// Model-level tensors: our module path → HF name → shape.
pub const MODEL_TENSORS: [(&str, &str, ShapeFn); 3] = [
    ("embed_tokens", "model.embed_tokens.weight", |c, _| {
        Some(vec![c.vocab_size, c.hidden_size])
    }),
    ("meta_tokens.tokens", "model.memory_tokens", |c, _| {
        (c.num_memory_tokens > 0).then(|| vec![c.num_memory_tokens, c.hidden_size])
    }),
    (
        "final_norm.weight",
        "model.final_layernorm.weight",
        |c, _| Some(vec![c.hidden_size]),
    ),
];

/// Per-layer tensors: our path under `layers.{i}.` → HF name under `model.layers.{i}.` →
/// shape (spec §5). `in_proj` has Q+K+V+x+z rows in a KV owner and Q+x+z in a consumer.
pub const LAYER_TENSORS: [(&str, &str, ShapeFn); 19] = [
    ("input_norm.weight", "input_layernorm.weight", |c, _| {
        Some(vec![c.hidden_size])
    }),
    ("mixer.in_proj.weight", "mamba.in_proj.weight", |c, i| {
        Some(vec![c.in_proj_rows(i), c.hidden_size])
    }),
    ("mixer.ssm.conv_weight", "mamba.conv1d.weight", |c, i| {
        ssm(c, i, Some(vec![c.d_inner(), 1, c.mamba_d_conv]))
    }),
    ("mixer.ssm.conv_bias", "mamba.conv1d.bias", |c, i| {
        ssm(c, i, c.mamba_conv_bias.then(|| vec![c.d_inner()]))
    }),
    (
        "mixer.ssm.x_proj.weight",
        "mamba.x_proj.0.weight",
        |c, i| {
            ssm(
                c,
                i,
                Some(vec![c.dt_rank() + 2 * c.mamba_d_state, c.d_inner()]),
            )
        },
    ),
    (
        "mixer.ssm.dt_proj.weight",
        "mamba.dt_proj.0.weight",
        |c, i| ssm(c, i, Some(vec![c.d_inner(), c.dt_rank()])),
    ),
    ("mixer.ssm.dt_bias", "mamba.dt_proj.0.bias", |c, i| {
        ssm(c, i, Some(vec![c.d_inner()]))
    }),
    ("mixer.ssm.a_log", "mamba.A_log.0", |c, i| {
        ssm(c, i, Some(vec![c.d_inner(), c.mamba_d_state]))
    }),
    ("mixer.ssm.d", "mamba.D.0", |c, i| {
        ssm(c, i, Some(vec![c.d_inner()]))
    }),
    (
        "mixer.ssm.dt_norm.weight",
        "mamba.dt_layernorm.weight",
        |c, i| ssm(c, i, Some(vec![c.dt_rank()])),
    ),
    (
        "mixer.ssm.b_norm.weight",
        "mamba.B_layernorm.weight",
        |c, i| ssm(c, i, Some(vec![c.mamba_d_state])),
    ),
    (
        "mixer.ssm.c_norm.weight",
        "mamba.C_layernorm.weight",
        |c, i| ssm(c, i, Some(vec![c.mamba_d_state])),
    ),
    (
        "mixer.attn_norm.weight",
        "mamba.pre_avg_layernorm1.weight",
        |c, i| c.mixer_kind(i).has_attention().then(|| vec![c.d_inner()]),
    ),
    (
        "mixer.ssm_norm.weight",
        "mamba.pre_avg_layernorm2.weight",
        |c, i| ssm(c, i, Some(vec![c.d_inner()])),
    ),
    ("mixer.out_proj.weight", "mamba.out_proj.weight", |c, _| {
        Some(vec![c.hidden_size, c.d_inner()])
    }),
    ("ffn_norm.weight", "pre_moe_layernorm.weight", |c, _| {
        Some(vec![c.hidden_size])
    }),
    (
        "ffn.gate_proj.weight",
        "moe.experts.0.gate_proj.weight",
        |c, _| Some(vec![c.intermediate_size, c.hidden_size]),
    ),
    (
        "ffn.up_proj.weight",
        "moe.experts.0.up_proj.weight",
        |c, _| Some(vec![c.intermediate_size, c.hidden_size]),
    ),
    (
        "ffn.down_proj.weight",
        "moe.experts.0.down_proj.weight",
        |c, _| Some(vec![c.hidden_size, c.intermediate_size]),
    ),
];

/// `shape` if layer `i` has SSM heads (an attention-only layer has none of their tensors).
fn ssm(c: &HymbaConfig, i: usize, shape: Option<Vec<usize>>) -> Option<Vec<usize>> {
    shape.filter(|_| c.mixer_kind(i).has_ssm())
}

/// The HF tensor name of one of our parameters, by module path (`layers.3.mixer.ssm.a_log` →
/// `model.layers.3.mamba.A_log.0`); `None` for a path the table does not know.
pub fn hf_name(module_path: &str) -> Option<String> {
    if let Some((_, hf, _)) = MODEL_TENSORS
        .iter()
        .find(|(ours, _, _)| *ours == module_path)
    {
        return Some((*hf).to_string());
    }
    let rest = module_path.strip_prefix("layers.")?;
    let (index, field) = rest.split_once('.')?;
    let layer: usize = index.parse().ok()?;
    LAYER_TENSORS
        .iter()
        .find(|(ours, _, _)| *ours == field)
        .map(|(_, hf, _)| format!("model.layers.{layer}.{hf}"))
}

/// Every tensor a checkpoint of `config` holds, HF name and shape, in model order (the
/// optional tied `lm_head.weight` is not listed). Computed from the config alone, so the
/// 1.5B layout can be checked without allocating the model.
pub fn hf_tensor_specs(config: &HymbaConfig) -> Vec<TensorSpec> {
    let model = |i: usize| {
        let (_, name, shape) = &MODEL_TENSORS[i];
        shape(config, 0).map(|s| ((*name).to_string(), s))
    };
    let layers = (0..config.num_hidden_layers).flat_map(|layer| {
        LAYER_TENSORS.iter().filter_map(move |(_, name, shape)| {
            shape(config, layer).map(|s| (format!("model.layers.{layer}.{name}"), s))
        })
    });
    model(0)
        .into_iter()
        .chain(model(1))
        .chain(layers)
        .chain(model(2))
        .collect()
}

/// Dtype and shape of one tensor as a file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    /// The element type.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<usize>,
}

/// Every problem of a checkpoint's tensor list against `config`, one line per tensor:
/// missing, wrong shape (with a `kv_reuse_group` hint when an `in_proj` has the other KV
/// role's row count), non-float dtype, unexpected name. Empty when the checkpoint fits.
pub fn check_tensors(
    config: &HymbaConfig,
    tensors: &BTreeMap<String, TensorHeader>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let specs = hf_tensor_specs(config);
    let expected: BTreeSet<&str> = specs.iter().map(|(n, _)| n.as_str()).collect();
    for (name, shape) in &specs {
        let Some(found) = tensors.get(name) else {
            problems.push(format!("`{name}`: missing (expected shape {shape:?})"));
            continue;
        };
        if found.shape != *shape {
            let mut line = format!(
                "`{name}`: shape {:?} in the file, expected {shape:?} from the config",
                found.shape
            );
            if let Some(hint) = kv_role_hint(config, name, &found.shape) {
                line.push_str("; ");
                line.push_str(&hint);
            }
            problems.push(line);
        }
        if float_dtype(found.dtype).is_none() {
            problems.push(format!(
                "`{name}`: dtype {:?} is not a float type (expected BF16, F16, F32 or F64)",
                found.dtype
            ));
        }
    }
    if let Some(head) = tensors.get(LM_HEAD) {
        let embed = [config.vocab_size, config.hidden_size];
        if head.shape != embed {
            problems.push(format!(
                "`{LM_HEAD}`: shape {:?}, expected the embedding's {embed:?} (the head is tied)",
                head.shape
            ));
        }
    }
    for name in tensors.keys() {
        if !expected.contains(name.as_str()) && name != LM_HEAD {
            problems.push(format!(
                "`{name}`: unexpected tensor (not in a Hymba checkpoint of this config)"
            ));
        }
    }
    problems
}

/// Explains an `in_proj` row count that belongs to the other KV role.
fn kv_role_hint(config: &HymbaConfig, name: &str, shape: &[usize]) -> Option<String> {
    let layer: usize = name
        .strip_prefix("model.layers.")?
        .strip_suffix(".mamba.in_proj.weight")?
        .parse()
        .ok()?;
    let base = config.q_width() + 2 * config.d_inner();
    let owner_rows = base + config.k_width() + config.v_width();
    let rows = *shape.first()?;
    match config.kv_role(layer) {
        KvRole::Owner if rows == base => Some(format!(
            "{rows} rows is a KV consumer's in_proj (no K/V rows) but `kv_reuse_group` makes \
             layer {layer} a KV owner"
        )),
        KvRole::Consumer { producer } if rows == owner_rows => Some(format!(
            "{rows} rows is a KV owner's in_proj (with K/V rows) but `kv_reuse_group` makes \
             layer {layer} a consumer of layer {producer}"
        )),
        _ => None,
    }
}

/// The float types weights may be stored in, with their byte width.
fn float_dtype(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::BF16 | Dtype::F16 => Some(2),
        Dtype::F32 => Some(4),
        Dtype::F64 => Some(8),
        _ => None,
    }
}

/// Decodes little-endian BF16/F16/F32/F64 bytes to f32 (exact except for F64).
fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let width = float_dtype(dtype)?;
    let chunks = bytes.chunks_exact(width);
    Some(match dtype {
        Dtype::BF16 => chunks
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::F16 => chunks
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::F32 => chunks
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => chunks
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// The memory-mapped weight files of a checkpoint directory.
#[derive(Debug)]
pub struct WeightFiles {
    /// Each file's path and mapping.
    files: Vec<(PathBuf, Mmap)>,
    /// For a sharded checkpoint: tensor name → file name, from the index.
    weight_map: Option<BTreeMap<String, String>>,
}

/// `model.safetensors.index.json` (its `metadata` is not needed).
#[derive(Debug, Serialize, Deserialize)]
struct ShardIndex {
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    weight_map: BTreeMap<String, String>,
}

/// An error about a checkpoint file.
fn file_error(path: &Path, message: impl fmt::Display) -> HymbaError {
    HymbaError::Checkpoint {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> HymbaError {
    HymbaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Memory-maps one file.
fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    // SAFETY: the mapping is read-only and lives no longer than the load; as with every
    // memory-mapped reader, the file must not be truncated by another process meanwhile.
    unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, e))
}

impl WeightFiles {
    /// Maps the weights of `dir`: the shards named by `model.safetensors.index.json` when it
    /// exists, else `model.safetensors`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| io_error(&index_path, e))?;
            let index: ShardIndex = serde_json::from_str(&text)
                .map_err(|e| file_error(&index_path, format!("not a safetensors index: {e}")))?;
            let names: BTreeSet<&String> = index.weight_map.values().collect();
            if names.is_empty() {
                return Err(file_error(&index_path, "`weight_map` is empty"));
            }
            let mut files = Vec::new();
            for name in names {
                let plain = Path::new(name).components().count() == 1;
                if !plain || name == ".." {
                    return Err(file_error(
                        &index_path,
                        format!(
                            "`weight_map` names `{name}`, which is not a file in the directory"
                        ),
                    ));
                }
                let path = dir.join(name);
                files.push((path.clone(), map_file(&path)?));
            }
            return Ok(Self {
                files,
                weight_map: Some(index.weight_map),
            });
        }
        let path = dir.join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(file_error(
                dir,
                format!("no weights: neither `{WEIGHTS_FILE}` nor `{INDEX_FILE}` is here"),
            ));
        }
        Self::single(path)
    }

    /// Maps one safetensors file.
    pub fn single(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let map = map_file(&path)?;
        Ok(Self {
            files: vec![(path, map)],
            weight_map: None,
        })
    }

    /// Parses every file's header and returns all tensors by name (views into the maps).
    /// A file that is not valid safetensors (truncated, bad header) is an error naming it;
    /// tensors in two files, or missing from the file the index puts them in, are
    /// [`HymbaError::Weights`] problems.
    pub fn tensors(&self) -> Result<BTreeMap<String, TensorView<'_>>> {
        let mut all: BTreeMap<String, TensorView<'_>> = BTreeMap::new();
        let mut owner: HashMap<String, &Path> = HashMap::new();
        let mut problems = Vec::new();
        for (path, map) in &self.files {
            let st = SafeTensors::deserialize(&map[..])
                .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
            for (name, view) in st.tensors() {
                if let Some(first) = owner.get(&name) {
                    problems.push(format!(
                        "`{name}`: in both `{}` and `{}`",
                        first.display(),
                        path.display()
                    ));
                    continue;
                }
                owner.insert(name.clone(), path);
                all.insert(name, view);
            }
        }
        if let Some(weight_map) = &self.weight_map {
            for (name, file) in weight_map {
                let listed_in = owner.get(name).and_then(|p| p.file_name());
                if listed_in.and_then(|f| f.to_str()) != Some(file.as_str()) {
                    problems.push(format!(
                        "`{name}`: the index puts it in `{file}`, which does not hold it"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(all)
        } else {
            Err(HymbaError::Weights { problems })
        }
    }
}

/// Dtype and shape of each view.
fn headers(tensors: &BTreeMap<String, TensorView<'_>>) -> BTreeMap<String, TensorHeader> {
    tensors
        .iter()
        .map(|(name, v)| {
            let header = TensorHeader {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
            };
            (name.clone(), header)
        })
        .collect()
}

/// A [`ModuleMapper`] that replaces each float parameter with the checkpoint tensor of the
/// same path, converted to the parameter's dtype.
struct HfLoader<'a, 'data> {
    /// Module path of the parameter being visited (`layers`, `3`, `mixer`, …).
    path: Vec<String>,
    tensors: &'a BTreeMap<String, TensorView<'data>>,
    /// HF names that were loaded.
    loaded: BTreeSet<String>,
    problems: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for HfLoader<'_, '_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let ours = self.path.join(".");
        let Some(name) = hf_name(&ours) else {
            self.problems
                .push(format!("parameter `{ours}` has no HF name in the table"));
            return param;
        };
        let Some(view) = self.tensors.get(&name) else {
            // Absent from this config (e.g. zero meta tokens); the check listed real misses.
            if param.num_params() > 0 {
                self.problems.push(format!("`{name}`: missing"));
            }
            return param;
        };
        let shape = param.dims().to_vec();
        if view.shape() != shape.as_slice() {
            self.problems.push(format!(
                "`{name}`: shape {:?} in the file, the model's `{ours}` is {shape:?}",
                view.shape()
            ));
            return param;
        }
        let Some(values) = decode_f32(view.dtype(), view.data()) else {
            self.problems.push(format!(
                "`{name}`: dtype {:?} is not a float type",
                view.dtype()
            ));
            return param;
        };
        self.loaded.insert(name);
        param.map(|old| {
            let data = TensorData::new(values, shape);
            Tensor::<B, D>::from_data(data, &old.device())
                .cast(old.dtype())
                .set_require_grad(old.is_require_grad())
        })
    }
}

/// Every problem of `tensors` against `config`, as one error.
fn check_views(config: &HymbaConfig, tensors: &BTreeMap<String, TensorView<'_>>) -> Result<()> {
    let problems = check_tensors(config, &headers(tensors));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(HymbaError::Weights { problems })
    }
}

/// Replaces every weight of `model` by the checkpoint tensor of its module path. The tensor
/// list must already have passed [`check_tensors`] against `model.config`.
fn fill<B: HymbaBackend>(
    model: Hymba<B>,
    tensors: &BTreeMap<String, TensorView<'_>>,
) -> Result<Hymba<B>> {
    let mut loader = HfLoader {
        path: Vec::new(),
        tensors,
        loaded: BTreeSet::new(),
        problems: Vec::new(),
    };
    let model = model.map(&mut loader);
    for (name, _) in hf_tensor_specs(&model.config) {
        if !loader.loaded.contains(&name) {
            loader
                .problems
                .push(format!("`{name}`: no model parameter maps to it"));
        }
    }
    if loader.problems.is_empty() {
        Ok(model)
    } else {
        Err(HymbaError::Weights {
            problems: loader.problems,
        })
    }
}

/// `dir`, if it is a directory.
fn checkpoint_dir(dir: &Path) -> Result<&Path> {
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(file_error(
            dir,
            "not a checkpoint directory (it does not exist or is a file)",
        ))
    }
}

/// Loads a checkpoint directory (`config.json` + safetensors, single or sharded) into a new
/// model on `device`. Tensors are memory-mapped and converted to the model's float type.
///
/// Errors: [`HymbaError::Io`] / [`HymbaError::ConfigParse`] / [`HymbaError::Config`] for the
/// config, [`HymbaError::Checkpoint`] for an unreadable weight file, and
/// [`HymbaError::Weights`] listing every missing, unexpected or mis-shaped tensor.
pub fn load_pretrained<B: HymbaBackend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<Hymba<B>> {
    let dir = checkpoint_dir(dir.as_ref())?;
    let config = HymbaConfig::from_file(dir.join(CONFIG_FILE))?;
    let files = WeightFiles::open(dir)?;
    let tensors = files.tensors()?;
    // Check before allocating: a wrong checkpoint fails fast, even for the 1.5B model.
    check_views(&config, &tensors)?;
    fill(Hymba::new(&config, device)?, &tensors)
}

/// Loads one safetensors file with HF names into an existing model (whose config decides
/// the expected shapes), replacing all its weights.
pub fn load_safetensors_into<B: HymbaBackend>(
    model: Hymba<B>,
    path: impl AsRef<Path>,
) -> Result<Hymba<B>> {
    let files = WeightFiles::single(path)?;
    let tensors = files.tensors()?;
    check_views(&model.config, &tensors)?;
    fill(model, &tensors)
}

/// Checks a checkpoint directory against its `config.json` without building the model
/// (headers only): the config and the HF tensor list it implies, or every problem. The
/// optional side files (`tokenizer_config.json`, `generation_config.json`, see
/// [`crate::hf`]) must parse and name only ids below `vocab_size` when present.
pub fn inspect_pretrained(dir: impl AsRef<Path>) -> Result<(HymbaConfig, Vec<TensorSpec>)> {
    let dir = checkpoint_dir(dir.as_ref())?;
    let config = HymbaConfig::from_file(dir.join(CONFIG_FILE))?;
    let files = WeightFiles::open(dir)?;
    check_views(&config, &files.tensors()?)?;
    crate::hf::SideFiles::read(dir, config.vocab_size)?;
    let specs = hf_tensor_specs(&config);
    Ok((config, specs))
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// Element type of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveDtype {
    /// 32-bit float: exact.
    #[default]
    F32,
    /// bfloat16, as NVIDIA publishes Hymba (round to nearest even).
    Bf16,
    /// IEEE half (round to nearest even).
    F16,
}

impl SaveDtype {
    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::Bf16 => Dtype::BF16,
            Self::F16 => Dtype::F16,
        }
    }

    /// The PyTorch name written as `torch_dtype` in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }
}

impl FromStr for SaveDtype {
    type Err = HymbaError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            other => Err(HymbaError::Input(format!(
                "unknown weight dtype `{other}` (expected f32, bf16 or f16)"
            ))),
        }
    }
}

impl fmt::Display for SaveDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

/// How [`save_pretrained`] writes a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Element type of the weights.
    pub dtype: SaveDtype,
    /// A `tokenizer.json` to copy into the directory.
    pub tokenizer: Option<PathBuf>,
    /// Split the weights into `model-0000k-of-0000n.safetensors` shards of at most this many
    /// bytes (a tensor larger than that gets a shard of its own) plus
    /// `model.safetensors.index.json`; `None` writes one `model.safetensors`.
    pub max_shard_bytes: Option<u64>,
}

/// One parameter to be written: read and encoded lazily, when the writer reaches it, so
/// saving never holds a second copy of the whole model (the 1.5B model is 6 GB in f32).
struct PendingTensor {
    /// Reads the parameter's values (a handle to the tensor, not a copy).
    read: Box<dyn Fn() -> TensorData>,
    shape: Vec<usize>,
    dtype: SaveDtype,
}

impl PendingTensor {
    fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.safetensors().bitsize() / 8
    }

    fn encode(&self) -> Vec<u8> {
        let data = (self.read)().convert::<f32>();
        let mut bytes = Vec::with_capacity(self.byte_len());
        let mut put = |v: f32| match self.dtype {
            SaveDtype::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
            SaveDtype::Bf16 => bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            SaveDtype::F16 => bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        };
        match data.as_slice::<f32>() {
            Ok(values) => values.iter().copied().for_each(&mut put),
            Err(_) => data.iter::<f32>().for_each(&mut put),
        }
        bytes
    }
}

impl View for &PendingTensor {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.encode())
    }

    fn data_len(&self) -> usize {
        self.byte_len()
    }
}

/// A [`ModuleVisitor`] that collects every float parameter under its HF name.
struct HfCollector {
    path: Vec<String>,
    dtype: SaveDtype,
    tensors: Vec<(String, PendingTensor)>,
    problems: Vec<String>,
}

impl<B: Backend> ModuleVisitor<B> for HfCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let ours = self.path.join(".");
        let Some(name) = hf_name(&ours) else {
            self.problems
                .push(format!("parameter `{ours}` has no HF name in the table"));
            return;
        };
        let shape = param.dims().to_vec();
        let n = shape.iter().product::<usize>();
        if n == 0 {
            return; // e.g. zero meta tokens: the reference has no such tensor.
        }
        let tensor = param.val();
        self.tensors.push((
            name,
            PendingTensor {
                read: Box::new(move || tensor.clone().into_data()),
                shape,
                dtype: self.dtype,
            },
        ));
    }
}

/// Writes `model` as an HF checkpoint directory (created if needed): `config.json` (with
/// `torch_dtype` set to the saved dtype), the weights under HF names in `model.safetensors`
/// (or shards plus `model.safetensors.index.json`), and `tokenizer.json` when given. The
/// reference `modeling_hymba.py` loads the result with `from_pretrained`.
pub fn save_pretrained<B: Backend>(
    model: &Hymba<B>,
    dir: impl AsRef<Path>,
    options: &SaveOptions,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;

    let mut collector = HfCollector {
        path: Vec::new(),
        dtype: options.dtype,
        tensors: Vec::new(),
        problems: Vec::new(),
    };
    model.visit(&mut collector);
    if !collector.problems.is_empty() {
        return Err(HymbaError::Weights {
            problems: collector.problems,
        });
    }

    let mut config = model.config.clone();
    config
        .extra
        .insert("torch_dtype".into(), options.dtype.torch_name().into());
    config.extra.entry("auto_map".into()).or_insert_with(|| {
        serde_json::json!({
            "AutoConfig": "configuration_hymba.HymbaConfig",
            "AutoModelForCausalLM": "modeling_hymba.HymbaForCausalLM"
        })
    });
    config.save(dir.join(CONFIG_FILE))?;

    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let single = dir.join(WEIGHTS_FILE);
    let index_path = dir.join(INDEX_FILE);
    let shards = shard(&collector.tensors, options.max_shard_bytes);
    if shards.len() <= 1 {
        remove_stale(&index_path)?;
        write_safetensors(&collector.tensors, metadata, &single)?;
    } else {
        remove_stale(&single)?;
        let n = shards.len();
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (k, range) in shards.into_iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
            let part = &collector.tensors[range];
            for (name, t) in part {
                weight_map.insert(name.clone(), file.clone());
                total += t.byte_len() as u64;
            }
            write_safetensors(part, metadata.clone(), &dir.join(&file))?;
        }
        let mut meta = serde_json::Map::new();
        meta.insert("total_size".into(), total.into());
        let index = ShardIndex {
            metadata: meta,
            weight_map,
        };
        let text = serde_json::to_string_pretty(&index).map_err(|e| file_error(&index_path, e))?;
        std::fs::write(&index_path, text).map_err(|e| io_error(&index_path, e))?;
    }

    if let Some(src) = &options.tokenizer {
        let dst = dir.join(TOKENIZER_FILE);
        let same = matches!((src.canonicalize(), dst.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if !same {
            std::fs::copy(src, &dst).map_err(|e| io_error(src, e))?;
        }
    }
    Ok(())
}

/// Consecutive ranges of tensors whose encoded size stays within `max_bytes`.
fn shard(
    tensors: &[(String, PendingTensor)],
    max_bytes: Option<u64>,
) -> Vec<std::ops::Range<usize>> {
    let Some(max) = max_bytes else {
        let everything = 0..tensors.len();
        return vec![everything];
    };
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, (_, t)) in tensors.iter().enumerate() {
        let n = t.byte_len() as u64;
        if i > start && size + n > max {
            ranges.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < tensors.len() {
        ranges.push(start..tensors.len());
    }
    ranges
}

fn write_safetensors(
    tensors: &[(String, PendingTensor)],
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let views = tensors.iter().map(|(name, t)| (name.as_str(), t));
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| file_error(path, e))
}

/// Removes a file left by an earlier save in the other layout (single vs sharded), which
/// the loader would otherwise prefer or trip over.
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, e)),
    }
}
