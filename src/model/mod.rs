//! Model directories (manifest, labels, ONNX) and tract inference.
//!
//! Loading parses the ONNX graph once; a fixed-shape optimised plan is then built
//! lazily for each input shape used and cached (a concrete shape runs several times
//! faster in tract than a symbolic one).

pub mod config;
pub mod labels;
pub mod manifest;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

pub use labels::{Label, Labels};
pub use manifest::{InputLayout, Manifest, Pooling};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "efficientat-mn04";

type Plan = Arc<TypedRunnableModel>;

/// Scores and embedding for one model call.
#[derive(Debug, Clone)]
pub struct Output {
    /// Per-class probabilities in label order.
    pub scores: Vec<f32>,
    /// Embedding vector.
    pub embedding: Vec<f32>,
    /// A fine-tuned network's group probabilities, in its groups' order (empty for
    /// the shipped network, which has none).
    pub heads: Vec<f32>,
    /// That network's own AudioSet probabilities (its `probs` output, in label
    /// order; empty without one): what its detectors' evidence gates read.
    pub net_scores: Vec<f32>,
}

/// Name of the output through which a fine-tuned network (`hearken train --method
/// net`) gives one probability per detection group, beside the model's own two.
pub const HEADS_OUTPUT: &str = "groups";

/// Name of a fine-tuned network's AudioSet output (distilled to the model's own).
pub const NET_SCORES_OUTPUT: &str = "probs";

/// A loaded model: manifest, labels and the parsed network.
pub struct Model {
    manifest: Manifest,
    labels: Labels,
    dir: PathBuf,
    graph: Graph,
    plans: Mutex<HashMap<usize, Plan>>,
    /// A fine-tuned network run beside the model's own for its group outputs.
    net: Option<Net>,
}

/// A fine-tuned network (`hearken train --method net`) and its plans.
struct Net {
    path: PathBuf,
    sha256: String,
    graph: Graph,
    plans: Mutex<HashMap<usize, Plan>>,
    /// For a network exported as its tail (`training/tail.py`): the name of the
    /// model's own tensor it reads, which the model's plans give as a third output.
    /// `None`: the network reads the mel window itself.
    reads: Option<String>,
}

/// A typed graph whose variable axis is a symbol, and that symbol.
type SymbolicGraph = (Arc<TypedModel>, Symbol);

/// A parsed ONNX graph with its outputs chosen: what plans are built from. Once
/// the plans a daemon needs exist it can be let go ([`Model::release_graph`]);
/// a plan for a new shape parses the file again.
struct Graph {
    path: PathBuf,
    outputs: Vec<String>,
    parsed: Mutex<Option<Arc<InferenceModel>>>,
    /// The graph typed and decluttered once with its variable axis (frames, or
    /// the batch of patches) left as a symbol: a plan for a new length then only
    /// needs the symbol set and code generated (~30 ms for mn04 instead of ~100).
    /// `Err` when the graph cannot be typed that way (plans are then built from
    /// the parsed graph, as before).
    typed: Mutex<Option<std::result::Result<SymbolicGraph, ()>>>,
}

impl Graph {
    fn parse(path: &Path, outputs: &[&str]) -> Result<InferenceModel> {
        tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| anyhow!("cannot parse {}: {e}", path.display()))?
            .with_outputs_by_name(outputs)
            .map_err(|e| anyhow!("{}: outputs {outputs:?}: {e}", path.display()))
    }

    fn new(path: &Path, outputs: &[&str], parsed: InferenceModel) -> Graph {
        Graph {
            path: path.to_path_buf(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            parsed: Mutex::new(Some(Arc::new(parsed))),
            typed: Mutex::new(None),
        }
    }

    /// A plan for input shape `dims`, whose axis `axis` is the variable one.
    fn plan(&self, dims: &[usize], axis: usize) -> Result<Plan> {
        if let Some((typed, sym)) = self.typed(dims, axis)? {
            let subs = HashMap::from([(sym, TDim::from(dims[axis] as i64))]);
            if let Ok(p) = typed
                .set_symbols(&subs)
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
            {
                return Ok(p);
            }
        }
        InferenceModel::clone(&*self.get()?)
            .with_input_fact(0, f32::fact(dims).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| anyhow!("cannot build a plan for shape {dims:?}: {e}"))
    }

    /// The symbolic typed graph, made on first use.
    fn typed(&self, dims: &[usize], axis: usize) -> Result<Option<SymbolicGraph>> {
        let mut t = self
            .typed
            .lock()
            .map_err(|_| anyhow!("model graph lock poisoned"))?;
        if t.is_none() {
            let parsed = self.get()?;
            let sym = parsed.symbols.sym("T");
            let shape: TVec<TDim> = dims
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if i == axis {
                        sym.clone().into()
                    } else {
                        TDim::from(d as i64)
                    }
                })
                .collect();
            let typed = InferenceModel::clone(&parsed)
                .with_input_fact(0, f32::fact(shape).into())
                .and_then(|m| m.into_typed())
                .and_then(|m| m.into_decluttered());
            *t = Some(typed.map(|m| (Arc::new(m), sym)).map_err(|_| ()));
        }
        Ok(t.as_ref().and_then(|r| r.as_ref().ok()).cloned())
    }

    /// The graph, parsed again if it was let go.
    fn get(&self) -> Result<Arc<InferenceModel>> {
        let mut g = self
            .parsed
            .lock()
            .map_err(|_| anyhow!("model graph lock poisoned"))?;
        if let Some(m) = g.as_ref() {
            return Ok(m.clone());
        }
        let outputs: Vec<&str> = self.outputs.iter().map(String::as_str).collect();
        let m = Arc::new(Graph::parse(&self.path, &outputs)?);
        *g = Some(m.clone());
        Ok(m)
    }

    fn release(&self) {
        if let Ok(mut g) = self.parsed.lock() {
            *g = None;
        }
        if let Ok(mut t) = self.typed.lock() {
            *t = None;
        }
    }

    fn share(&self) -> Graph {
        Graph {
            path: self.path.clone(),
            outputs: self.outputs.clone(),
            parsed: Mutex::new(self.parsed.lock().ok().and_then(|g| g.clone())),
            typed: Mutex::new(self.typed.lock().ok().and_then(|t| t.clone())),
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.model.name)
            .field("dir", &self.dir)
            .finish()
    }
}

/// Directories searched for a model given by name, in order.
pub fn model_search_path() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("HEARKEN_MODELS") {
        dirs.extend(std::env::split_paths(&v));
    }
    dirs.push(PathBuf::from("models"));
    dirs.push(PathBuf::from("/usr/share/hearken/models"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    dirs
}

/// Finds a model directory from a name (`yamnet`) or a path to a directory holding
/// `model.toml`.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.join("model.toml").is_file() {
        return Ok(p.to_path_buf());
    }
    if spec.contains('/') {
        bail!("model directory {spec} has no model.toml");
    }
    let search = model_search_path();
    for d in &search {
        let cand = d.join(spec);
        if cand.join("model.toml").is_file() {
            return Ok(cand);
        }
    }
    let tried: Vec<String> = search.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "model '{spec}' not found (looked in {}); known models: efficientat-mn04, yamnet; \
         pass --model DIR for a directory holding model.toml",
        tried.join(", ")
    )
}

/// The plan cached under `key`, built by `build` on first use.
fn cached_plan(
    plans: &Mutex<HashMap<usize, Plan>>,
    key: usize,
    build: impl FnOnce() -> Result<Plan>,
) -> Result<Plan> {
    let mut plans = plans
        .lock()
        .map_err(|_| anyhow!("model plan cache poisoned"))?;
    if let Some(p) = plans.get(&key) {
        return Ok(p.clone());
    }
    let plan = build()?;
    plans.insert(key, plan.clone());
    Ok(plan)
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Model {
    /// Loads the model in `dir` (manifest, labels and ONNX side by side).
    pub fn load(dir: &Path) -> Result<Model> {
        Self::load_with_assets(&dir.join("model.toml"), dir)
    }

    /// Loads a model by name or directory (see [`resolve_model_dir`]).
    pub fn open(spec: &str) -> Result<Model> {
        Self::load(&resolve_model_dir(spec)?)
    }

    /// Loads the manifest at `manifest_path` with its ONNX and labels files taken from
    /// `assets`.
    pub fn load_with_assets(manifest_path: &Path, assets: &Path) -> Result<Model> {
        let manifest = Manifest::load(manifest_path)?;
        let name = manifest.model.name.clone();
        let onnx = assets.join(&manifest.model.onnx);
        let labels_path = assets.join(&manifest.model.labels);
        let hint = "run ./setup.sh to install the model files, or pass --model DIR for a \
                    directory holding model.toml with its files";
        if !onnx.is_file() {
            bail!("model {name}: {} not found; {hint}", onnx.display());
        }
        if !labels_path.is_file() {
            bail!("model {name}: {} not found; {hint}", labels_path.display());
        }
        let digest = sha256_file(&onnx).with_context(|| format!("reading {}", onnx.display()))?;
        if !digest.eq_ignore_ascii_case(&manifest.model.sha256) {
            bail!(
                "model {name}: {} has sha256 {digest}, but the manifest expects {}; \
                 the file is damaged or not this model ({hint})",
                onnx.display(),
                manifest.model.sha256
            );
        }
        let labels = Labels::load(&labels_path)?;
        if labels.len() != manifest.model.classes {
            bail!(
                "model {name}: {} has {} labels, the manifest says {} classes",
                labels_path.display(),
                labels.len(),
                manifest.model.classes
            );
        }
        let outputs = [manifest.io.scores.as_str(), manifest.io.embedding.as_str()];
        let parsed = Graph::parse(&onnx, &outputs).map_err(|e| anyhow!("model {name}: {e}"))?;
        let graph = Graph::new(&onnx, &outputs, parsed);
        Ok(Model {
            manifest,
            labels,
            dir: assets.to_path_buf(),
            graph,
            plans: Mutex::new(HashMap::new()),
            net: None,
        })
    }

    /// This model with a fine-tuned network (`hearken train --method net`) run
    /// beside its own on every window: the model's scores and embedding stay its
    /// own (so raw groups, trained heads and evidence gates see what they always
    /// did), and the network adds [`HEADS_OUTPUT`], `heads` group probabilities.
    /// `sha256` is what the detector files that name the network recorded; a file
    /// that differs is refused.
    pub fn with_net(&self, onnx: &Path, sha256: &str, heads: usize) -> Result<Model> {
        let name = self.name();
        let digest = sha256_file(onnx)
            .with_context(|| format!("cannot read the fine-tuned network {}", onnx.display()))?;
        if !digest.eq_ignore_ascii_case(sha256) {
            bail!(
                "the fine-tuned network {} has sha256 {digest}, but its detectors were trained with {sha256}; retrain with `hearken train --method net`",
                onnx.display()
            );
        }
        if self.manifest.io.layout != InputLayout::BatchChannelMelsFrames {
            bail!("model {name} takes patches; a fine-tuned network needs a window model");
        }
        let parsed = tract_onnx::onnx().model_for_path(onnx).map_err(|e| {
            anyhow!(
                "cannot parse the fine-tuned network {}: {e}",
                onnx.display()
            )
        })?;
        // A network exported as its tail reads the model's own tensor where its
        // trained blocks begin (its input is named after it): the model then gives
        // that tensor too, and the lower blocks run once per window, not twice.
        let input = parsed
            .input_outlets()
            .ok()
            .and_then(|o| o.first().copied())
            .map(|o| parsed.node(o.node).name.clone())
            .unwrap_or_default();
        let reads = (input != self.manifest.io.input && input != "mel").then_some(input);
        let own = match &reads {
            Some(t) => {
                let outputs = [
                    self.manifest.io.scores.as_str(),
                    self.manifest.io.embedding.as_str(),
                    t.as_str(),
                ];
                let g = Graph::parse(&self.graph.path, &outputs).map_err(|e| {
                    anyhow!(
                        "the fine-tuned network {} reads the tensor {t} of model {name}, which \
                         it cannot give ({e:#}); retrain with `hearken train --method net`",
                        onnx.display()
                    )
                })?;
                Graph::new(&self.graph.path, &outputs, g)
            }
            None => self.graph.share(),
        };
        // mn04 fine-tuned has AudioSet outputs too; a frame-level detector
        // (`--method crnn`) has only its group outputs.
        let graph = match parsed
            .clone()
            .with_outputs_by_name([HEADS_OUTPUT, NET_SCORES_OUTPUT])
        {
            Ok(g) => Graph::new(onnx, &[HEADS_OUTPUT, NET_SCORES_OUTPUT], g),
            Err(_) => {
                let g = parsed.with_outputs_by_name([HEADS_OUTPUT]).map_err(|e| {
                    anyhow!(
                        "the fine-tuned network {} lacks the output {HEADS_OUTPUT}: {e}",
                        onnx.display()
                    )
                })?;
                Graph::new(onnx, &[HEADS_OUTPUT], g)
            }
        };
        let m = Model {
            manifest: self.manifest.clone(),
            labels: self.labels.clone(),
            dir: self.dir.clone(),
            graph: own,
            plans: Mutex::new(HashMap::new()),
            net: Some(Net {
                path: onnx.to_path_buf(),
                sha256: digest.to_ascii_lowercase(),
                graph,
                plans: Mutex::new(HashMap::new()),
                reads,
            }),
        };
        // One call now, so a network for another input or group count is refused at
        // start-up rather than on the first window.
        let frames = (self.manifest.frontend.sample_rate as usize * 2)
            / self.manifest.frontend.hop_length.max(1);
        let out = m
            .run_window(&vec![0.0; frames * self.manifest.frontend.n_mels])
            .with_context(|| format!("the fine-tuned network {}", onnx.display()))?;
        if out.heads.len() != heads {
            bail!(
                "the fine-tuned network {} gives {} group outputs; its detectors expect {heads}",
                onnx.display(),
                out.heads.len()
            );
        }
        if !out.net_scores.is_empty() && out.net_scores.len() != self.labels.len() {
            bail!(
                "the fine-tuned network {} gives {} AudioSet outputs; model {name} has {} classes",
                onnx.display(),
                out.net_scores.len(),
                self.labels.len()
            );
        }
        Ok(m)
    }

    /// The fine-tuned network in use, if any (see [`Model::with_net`]): its file
    /// and sha256.
    pub fn net(&self) -> Option<(&Path, &str)> {
        self.net
            .as_ref()
            .map(|n| (n.path.as_path(), n.sha256.as_str()))
    }

    /// For a fine-tuned network exported as its tail: the model's own tensor it
    /// reads (so the lower blocks they share run once per window).
    pub fn net_reads(&self) -> Option<&str> {
        self.net.as_ref().and_then(|n| n.reads.as_deref())
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Model name from the manifest.
    pub fn name(&self) -> &str {
        &self.manifest.model.name
    }

    /// Class labels in output order.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Directory holding the model files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn shape_for(&self, n: usize) -> [usize; 4] {
        let mels = self.manifest.frontend.n_mels;
        match self.manifest.io.layout {
            InputLayout::BatchChannelMelsFrames => [1, 1, mels, n],
            InputLayout::BatchFramesMels => {
                [n, self.manifest.windows.patch_frames.unwrap_or(0), mels, 0]
            }
        }
    }

    /// Lets go of the parsed graphs (a few MB for mn04) once the plans in use are
    /// built: a plan for a shape not seen yet parses the ONNX file again.
    pub fn release_graph(&self) {
        self.graph.release();
        if let Some(net) = &self.net {
            net.graph.release();
        }
    }

    /// The runnable plan for `n` frames (window models) or a batch of `n` patches
    /// (patch models), built on first use.
    fn plan(&self, n: usize) -> Result<Plan> {
        self.plan_of(&self.graph, &self.plans, n)
    }

    fn plan_of(
        &self,
        graph: &Graph,
        plans: &Mutex<HashMap<usize, Plan>>,
        n: usize,
    ) -> Result<Plan> {
        cached_plan(plans, n, || {
            let shape = self.shape_for(n);
            let (dims, axis): (&[usize], usize) = match self.manifest.io.layout {
                InputLayout::BatchChannelMelsFrames => (&shape[..4], 3),
                InputLayout::BatchFramesMels => (&shape[..3], 0),
            };
            graph
                .plan(dims, axis)
                .map_err(|e| anyhow!("model {}: {e:#}", self.name()))
        })
    }

    /// Classifies one window of `frames` (frame-major, `n_mels` values per frame).
    /// For window models only.
    pub fn run_window(&self, frames: &[f32]) -> Result<Output> {
        let mels = self.manifest.frontend.n_mels;
        if self.manifest.io.layout != InputLayout::BatchChannelMelsFrames {
            bail!("model {} takes patches, not windows", self.name());
        }
        if frames.is_empty() || !frames.len().is_multiple_of(mels) {
            bail!(
                "window of {} values is not a whole number of frames",
                frames.len()
            );
        }
        let n = frames.len() / mels;
        // frame-major [n][mels] → [1, 1, mels, n]
        let mut data = vec![0.0f32; frames.len()];
        for (t, frame) in frames.chunks_exact(mels).enumerate() {
            for (m, &v) in frame.iter().enumerate() {
                data[m * n + t] = v;
            }
        }
        let input = Tensor::from_shape(&[1, 1, mels, n], &data)?;
        let mut out = self.run(n, input)?;
        Ok(out.remove(0))
    }

    /// Classifies `count` patches laid out back to back (frame-major). For patch
    /// models only; each patch is run as its own batch-1 call, which is faster in tract
    /// than one large batch.
    pub fn run_patches(&self, patches: &[f32]) -> Result<Vec<Output>> {
        let mels = self.manifest.frontend.n_mels;
        let Some(pf) = self.manifest.windows.patch_frames else {
            bail!("model {} takes windows, not patches", self.name());
        };
        let size = pf * mels;
        if !patches.len().is_multiple_of(size) {
            bail!("{} values are not a whole number of patches", patches.len());
        }
        let mut outs = Vec::with_capacity(patches.len() / size);
        for p in patches.chunks_exact(size) {
            let input = Tensor::from_shape(&[1, pf, mels], p)?;
            outs.extend(self.run(1, input)?);
        }
        Ok(outs)
    }

    /// A fine-tuned network's group outputs and AudioSet outputs (empty when it
    /// has none) for `input`: the mel window, or for a tail the model's tensor.
    fn run_net(&self, net: &Net, key: usize, input: TValue) -> Result<(Vec<f32>, Vec<f32>)> {
        let plan = match net.reads {
            None => self.plan_of(&net.graph, &net.plans, key)?,
            // The tensor's last axis is time, as the mel window's is.
            Some(_) => cached_plan(&net.plans, key, || {
                net.graph
                    .plan(input.shape(), input.rank() - 1)
                    .map_err(|e| anyhow!("the fine-tuned network {}: {e:#}", net.path.display()))
            })?,
        };
        let res = plan.run(tvec!(input)).map_err(|e| {
            anyhow!(
                "the fine-tuned network {}: inference failed: {e}",
                net.path.display()
            )
        })?;
        let flat = |i: usize| -> Result<Vec<f32>> {
            Ok(res[i]
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect())
        };
        match res.len() {
            1 => Ok((flat(0)?, Vec::new())),
            2 => Ok((flat(0)?, flat(1)?)),
            n => bail!(
                "the fine-tuned network {}: expected 1 or 2 outputs, got {n}",
                net.path.display()
            ),
        }
    }

    fn run(&self, key: usize, input: Tensor) -> Result<Vec<Output>> {
        let tail = self.net.as_ref().filter(|n| n.reads.is_some());
        let (mut heads, mut net_scores) = match &self.net {
            Some(net) if net.reads.is_none() => self.run_net(net, key, input.clone().into())?,
            _ => (Vec::new(), Vec::new()),
        };
        let plan = self.plan(key)?;
        let mut res = plan
            .run(tvec!(input.into()))
            .map_err(|e| anyhow!("model {}: inference failed: {e}", self.name()))?;
        let expected = if tail.is_some() { 3 } else { 2 };
        if res.len() != expected {
            bail!(
                "model {}: expected {expected} outputs, got {}",
                self.name(),
                res.len()
            );
        }
        if let Some(net) = tail {
            // The third output is the tensor the tail reads (the count was checked).
            if let Some(trunk) = res.pop() {
                (heads, net_scores) = self.run_net(net, key, trunk)?;
            }
        }
        let scores = res[0].to_plain_array_view::<f32>()?;
        let emb = res[1].to_plain_array_view::<f32>()?;
        let classes = self.manifest.model.classes;
        let edim = self.manifest.io.embedding_dim;
        let (s, e) = (scores.as_slice(), emb.as_slice());
        let (Some(s), Some(e)) = (s, e) else {
            bail!("model {}: outputs are not contiguous", self.name());
        };
        if s.len() % classes != 0 || e.len() % edim != 0 || s.len() / classes != e.len() / edim {
            bail!(
                "model {}: output sizes {} and {} do not match {classes} classes and a {edim}-d embedding",
                self.name(),
                s.len(),
                e.len()
            );
        }
        let units = s.len() / classes;
        if units != 1 && !heads.is_empty() {
            bail!("model {}: group outputs need a batch of one", self.name());
        }
        Ok(s.chunks_exact(classes)
            .zip(e.chunks_exact(edim))
            .map(|(s, e)| Output {
                scores: s.to_vec(),
                embedding: e.to_vec(),
                heads: heads.clone(),
                net_scores: net_scores.clone(),
            })
            .collect())
    }
}
