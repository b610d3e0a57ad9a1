//! Gradients and weights packed end to end into a few large buffers, in the module's
//! parameter order.
//!
//! Why: an optimizer step of hymba-125m touches ≈ 290 parameter tensors. Handled tensor by
//! tensor, averaging micro-batches, summing devices, clipping and AdamW cost about fifteen
//! device operations per tensor — ≈ 4,500 operations per step, each queued through
//! burn-fusion's thread — for what is a few passes over 500 MB. Packed, each of those is one
//! operation per buffer, and moving gradients or weights between devices is one copy per
//! buffer instead of one per tensor. What stays per tensor is the packing of each
//! micro-batch's gradients (one copy each); the optimizer's parameters are views of its
//! packed weights (see [`crate::optim`]).
//!
//! The layout is the parameters in `Module::visit` order, cut into buffers of at most
//! [`CHUNK_ELEMENTS`] (a tensor larger than that gets a buffer of its own). It depends only
//! on the parameters' sizes, so every replica of a model and every step agree on it, whatever
//! the `ParamId`s (loading a checkpoint replaces them).

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;

/// Elements per packed buffer: 2²⁵ f32 values, 128 MiB, WebGPU's default limit for one
/// storage-buffer binding. Larger buffers would save few operations (hymba-125m's
/// parameters make four buffers, hymba-1.5b's 49) but fail where that limit holds: with
/// 2²⁸, lavapipe could not allocate hymba-125m's 520 MB gradient buffer. A tensor larger
/// than this still gets a buffer of its own, as it had before packing.
pub const CHUNK_ELEMENTS: usize = 1 << 25;

/// WebGPU's default `maxStorageBufferBindingSize`, in bytes.
const WEBGPU_DEFAULT_BINDING_BYTES: usize = 128 << 20;
const _: () = assert!(CHUNK_ELEMENTS * size_of::<f32>() <= WEBGPU_DEFAULT_BINDING_BYTES);

/// The first of the `ParamId`s under which [`Packed::into_gradients`] files its
/// buffers (buffer `i` under `PACKED_ID_BASE + i`), so that packed gradients travel through
/// burn's `Learner::optimizer_step`, which only takes `GradientsParams`. Parameter ids are
/// random 64-bit values: a clash is as likely as guessing one.
const PACKED_ID_BASE: u64 = 0x9ac6_ed00_0000_0000;

/// Walks the parameters in module order and says where each one lives in the buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    limit: usize,
    chunk: Option<usize>,
    filled: usize,
}

impl Cursor {
    /// A cursor for buffers of at most `limit` elements.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            chunk: None,
            filled: 0,
        }
    }

    /// Places the next parameter, of `n` elements: `(buffer, offset)`.
    pub(crate) fn place(&mut self, n: usize) -> (usize, usize) {
        match self.chunk {
            Some(chunk) if self.filled + n <= self.limit => {
                let offset = self.filled;
                self.filled += n;
                (chunk, offset)
            }
            _ => {
                let chunk = self.chunk.map_or(0, |c| c + 1);
                self.chunk = Some(chunk);
                self.filled = n;
                (chunk, 0)
            }
        }
    }

    /// Places the next parameter, of `n` elements, and returns the entry of its buffer in
    /// `per_buffer` (one entry per buffer, a default one added when a buffer begins): what
    /// every visit that gathers something per buffer needs.
    pub(crate) fn entry<'a, T: Default>(
        &mut self,
        n: usize,
        per_buffer: &'a mut Vec<T>,
    ) -> &'a mut T {
        let (chunk, _) = self.place(n);
        if chunk == per_buffer.len() {
            per_buffer.push(T::default());
        }
        &mut per_buffer[chunk]
    }

    /// Places the next parameter, of shape `dims`, and returns its view in `chunks`.
    pub(crate) fn view<B: Backend, const D: usize>(
        &mut self,
        chunks: &[Tensor<B, 1>],
        dims: [usize; D],
    ) -> Tensor<B, D> {
        let n = dims.iter().product::<usize>();
        let (chunk, offset) = self.place(n);
        chunks[chunk]
            .clone()
            .slice(offset..offset + n)
            .reshape(dims)
    }
}

/// A model's gradients (f32) or weights, packed into buffers on one device (see the module
/// docs).
#[derive(Debug, Clone)]
pub struct Packed<B: AutodiffBackend> {
    chunks: Vec<Tensor<B::InnerBackend, 1>>,
}

/// What a packing visit reads from each parameter.
enum Source<'a> {
    /// Its gradient, moved out of the map (zeros where it has none).
    Gradients(&'a mut GradientsParams),
    /// Its value, in its own dtype.
    Weights,
}

/// The packing visit: each parameter flattened into its buffer's list.
struct Pack<'a, B: AutodiffBackend> {
    source: Source<'a>,
    cursor: Cursor,
    groups: Vec<Vec<Tensor<B::InnerBackend, 1>>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Pack<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        let flat = match &mut self.source {
            Source::Gradients(grads) => match grads.remove::<B::InnerBackend, D>(param.id) {
                Some(g) => g.cast(DType::F32).reshape([n]),
                None => Tensor::zeros([n], &value.device()),
            },
            Source::Weights => value.inner().reshape([n]),
        };
        self.cursor.entry(n, &mut self.groups).push(flat);
    }
}

impl<'a, B: AutodiffBackend> Pack<'a, B> {
    fn run<M: AutodiffModule<B>>(module: &M, source: Source<'a>, limit: usize) -> Packed<B> {
        let mut pack = Self {
            source,
            cursor: Cursor::new(limit),
            groups: Vec::new(),
        };
        module.visit(&mut pack);
        let chunks = pack
            .groups
            .into_iter()
            .map(|mut group| {
                if group.len() == 1 {
                    group.remove(0)
                } else {
                    Tensor::cat(group, 0)
                }
            })
            .collect();
        Packed { chunks }
    }
}

/// Replaces each parameter's value by its view in the packed buffers.
struct Unpack<'a, B: AutodiffBackend> {
    chunks: &'a [Tensor<B::InnerBackend, 1>],
    cursor: Cursor,
    /// `Some`: give every parameter a new id and list them here; `None`: keep the ids.
    fresh_ids: Option<Vec<ParamId>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Unpack<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (mut id, tensor, mapper) = param.consume();
        let value = self.cursor.view(self.chunks, tensor.dims());
        let value = Tensor::from_inner(value).set_require_grad(tensor.is_require_grad());
        if let Some(ids) = &mut self.fresh_ids {
            id = ParamId::new();
            ids.push(id);
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

/// The element count of each packed buffer of `module`'s parameters.
pub(crate) fn chunk_sizes<B: Backend, M: Module<B>>(module: &M) -> Vec<usize> {
    struct Sizes(Cursor, Vec<usize>);
    impl<B: Backend> ModuleVisitor<B> for Sizes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let n = param.val().shape().num_elements();
            *self.0.entry(n, &mut self.1) += n;
        }
    }
    let mut sizes = Sizes(Cursor::new(CHUNK_ELEMENTS), Vec::new());
    module.visit(&mut sizes);
    sizes.1
}

/// The ids of `module`'s parameters, in the packed layout's order.
pub(crate) fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

impl<B: AutodiffBackend> Packed<B> {
    /// Packs `grads` of `module`'s parameters as f32 into buffers of [`CHUNK_ELEMENTS`]. The
    /// gradients are moved out; a parameter without one (not used by the loss, or frozen)
    /// packs as zeros.
    pub fn gradients<M: AutodiffModule<B>>(module: &M, grads: GradientsParams) -> Self {
        Self::gradients_chunked(module, grads, CHUNK_ELEMENTS)
    }

    /// [`Self::gradients`] with buffers of at most `limit` elements.
    pub fn gradients_chunked<M: AutodiffModule<B>>(
        module: &M,
        mut grads: GradientsParams,
        limit: usize,
    ) -> Self {
        // Already packed (an `into_gradients` round trip): take the buffers as they are.
        if let Some(packed) = Self::from_gradients(&mut grads) {
            return packed;
        }
        Pack::run(module, Source::Gradients(&mut grads), limit)
    }

    /// Packs `module`'s weights (in their dtype), e.g. to send them to another device in one
    /// copy per buffer; [`Self::load_weights`] puts them into a replica.
    pub fn weights<M: AutodiffModule<B>>(module: &M) -> Self {
        Pack::run(module, Source::Weights, CHUNK_ELEMENTS)
    }

    /// `module` with every parameter's value replaced by its view in these buffers (packed
    /// by [`Self::weights`] from a module of the same structure). Each parameter keeps its
    /// id and whether it requires a gradient; tensors that are not parameters stay as they
    /// are.
    pub fn load_weights<M: AutodiffModule<B>>(&self, module: M) -> M {
        module.map(&mut Unpack::<B> {
            chunks: &self.chunks,
            cursor: Cursor::new(CHUNK_ELEMENTS),
            fresh_ids: None,
        })
    }

    /// [`Self::load_weights`], giving every parameter a new id: the module and its ids.
    pub(crate) fn load_weights_renamed<M: AutodiffModule<B>>(
        &self,
        module: M,
    ) -> (M, Vec<ParamId>) {
        let mut unpack = Unpack::<B> {
            chunks: &self.chunks,
            cursor: Cursor::new(CHUNK_ELEMENTS),
            fresh_ids: Some(Vec::new()),
        };
        let module = module.map(&mut unpack);
        (module, unpack.fresh_ids.unwrap_or_default())
    }

    /// Packed buffers made elsewhere (in the layout of [`Self::weights`]).
    pub(crate) fn from_chunks(chunks: Vec<Tensor<B::InnerBackend, 1>>) -> Self {
        Self { chunks }
    }

    /// The buffers, in layout order.
    pub fn chunks(&self) -> &[Tensor<B::InnerBackend, 1>] {
        &self.chunks
    }

    /// The buffers, in layout order, moved out.
    pub fn into_chunks(self) -> Vec<Tensor<B::InnerBackend, 1>> {
        self.chunks
    }

    /// Elements over all buffers.
    pub fn num_elements(&self) -> usize {
        self.chunks.iter().map(|c| c.shape().num_elements()).sum()
    }

    /// `f` applied to every buffer.
    fn map(self, f: impl FnMut(Tensor<B::InnerBackend, 1>) -> Tensor<B::InnerBackend, 1>) -> Self {
        Self {
            chunks: self.chunks.into_iter().map(f).collect(),
        }
    }

    /// Every gradient times `factor`.
    pub fn scale(self, factor: f64) -> Self {
        self.map(|c| c.mul_scalar(factor))
    }

    /// The buffers on `device` (one copy each).
    pub fn to_device(self, device: &Device<B>) -> Self {
        self.map(|c| c.to_device(device))
    }

    /// The global L2 norm of every gradient: one square-and-sum per buffer, read back once.
    pub fn norm(&self) -> f64 {
        if self.chunks.is_empty() {
            return 0.0;
        }
        let sums: Vec<_> = self
            .chunks
            .iter()
            .map(|c| c.clone().square().sum())
            .collect();
        Tensor::cat(sums, 0)
            .sum()
            .into_scalar()
            .elem::<f64>()
            .sqrt()
    }

    /// Files the buffers in a `GradientsParams` under reserved ids, for
    /// `Learner::optimizer_step`; [`Self::gradients`] takes them back out as they are.
    pub fn into_gradients(self) -> GradientsParams {
        let mut grads = GradientsParams::new();
        for (i, chunk) in self.chunks.into_iter().enumerate() {
            grads.register::<B::InnerBackend, 1>(ParamId::from(PACKED_ID_BASE + i as u64), chunk);
        }
        grads
    }

    /// The buffers filed by [`Self::into_gradients`], if `grads` holds them.
    fn from_gradients(grads: &mut GradientsParams) -> Option<Self> {
        let chunks: Vec<_> = (0..)
            .map_while(|i| grads.remove::<B::InnerBackend, 1>(ParamId::from(PACKED_ID_BASE + i)))
            .collect();
        (!chunks.is_empty()).then_some(Self { chunks })
    }
}

/// The element-wise sum of two packings of the same model's gradients: one add per buffer.
impl<B: AutodiffBackend> std::ops::Add for Packed<B> {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        assert_eq!(
            self.chunks.len(),
            other.chunks.len(),
            "packed gradients of two different models"
        );
        let chunks = self
            .chunks
            .into_iter()
            .zip(other.chunks)
            .map(|(a, b)| a + b)
            .collect();
        Self { chunks }
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (0 = no clipping);
/// returns them with the norm before clipping. burn clips tensor by tensor; LM training
/// clips the whole gradient.
pub fn clip_global_norm<B: AutodiffBackend>(grads: Packed<B>, max_norm: f64) -> (Packed<B>, f64) {
    let norm = grads.norm();
    if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
        (grads.scale(max_norm / norm), norm)
    } else {
        (grads, norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LanguageModel;
    use burn::backend::{Autodiff, NdArray};
    use hymba::{Hymba, HymbaConfig};

    type B = Autodiff<NdArray>;

    /// A tiny model and the gradients of its loss on a fixed batch.
    fn model_and_grads() -> (LanguageModel<B>, GradientsParams) {
        let device = Default::default();
        B::seed(&device, 3);
        let model = LanguageModel::new(
            Hymba::<B>::new(&HymbaConfig::tiny(), &device).expect("tiny model"),
            None,
        );
        let grads = grads_of(&model);
        (model, grads)
    }

    /// The gradients of `model`'s loss on a fixed batch (the same on every call: tests run
    /// in parallel and share burn's seed, so a model is made once per test).
    fn grads_of(model: &LanguageModel<B>) -> GradientsParams {
        let device = Default::default();
        let ids: Vec<i64> = (0..2 * 24).map(|i| 1 + (i * 37 % 400) as i64).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 24]), &device);
        GradientsParams::from_grads(model.hymba.forward_loss(ids, None).backward(), model)
    }

    /// Every gradient's values, in the model's parameter order.
    fn grad_values(model: &LanguageModel<B>, grads: &GradientsParams) -> Vec<f64> {
        struct Collect<'a>(&'a GradientsParams, Vec<f64>);
        impl ModuleVisitor<B> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = self.0.get::<NdArray, D>(param.id) {
                    self.1.extend(g.into_data().iter::<f64>());
                }
            }
        }
        let mut c = Collect(grads, Vec::new());
        model.visit(&mut c);
        c.1
    }

    fn packed_values(packed: &Packed<B>) -> Vec<f64> {
        packed
            .chunks()
            .iter()
            .flat_map(|c| c.clone().into_data().iter::<f64>().collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn cursor_fills_buffers_in_order_and_gives_big_tensors_their_own() {
        let mut cursor = Cursor::new(10);
        let places: Vec<_> = [4, 6, 1, 25, 3, 0].map(|n| cursor.place(n)).to_vec();
        assert_eq!(places, vec![(0, 0), (0, 4), (1, 0), (2, 0), (3, 0), (3, 3)]);
    }

    #[test]
    fn packing_keeps_every_gradient_in_module_order_in_any_chunking() {
        let (model, grads) = model_and_grads();
        let values = grad_values(&model, &grads);
        assert!(values.len() > 10_000, "{} gradient values", values.len());
        for (limit, min_chunks) in [(CHUNK_ELEMENTS, 1), (1000, 10), (1, 20)] {
            let packed = Packed::gradients_chunked(&model, grads_of(&model), limit);
            assert!(packed.chunks().len() >= min_chunks, "limit {limit}");
            if limit == CHUNK_ELEMENTS {
                assert_eq!(packed.chunks().len(), 1);
            }
            assert_eq!(packed_values(&packed), values, "limit {limit}");
            // Through `GradientsParams` and back: the same buffers.
            let again = Packed::gradients(&model, packed.clone().into_gradients());
            assert_eq!(packed_values(&again), values);
        }
    }

    #[test]
    fn global_norm_is_the_l2_norm_of_every_gradient_in_any_chunking() {
        let (model, grads) = model_and_grads();
        let values = grad_values(&model, &grads);
        let want = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        for limit in [CHUNK_ELEMENTS, 1000, 1] {
            let packed = Packed::gradients_chunked(&model, grads_of(&model), limit);
            let (packed, got) = clip_global_norm(packed, 0.0);
            assert!(
                (got - want).abs() <= 1e-4 * want,
                "limit {limit}: {got} vs {want}"
            );
            // max_norm 0: nothing is scaled.
            assert_eq!(packed_values(&packed), values);
        }
    }

    #[test]
    fn clipping_scales_every_gradient_to_the_max_norm() {
        let (model, grads) = model_and_grads();
        let packed = Packed::gradients(&model, grads);
        let before = packed_values(&packed);
        let (packed, norm) = clip_global_norm(packed, 1e9);
        assert_eq!(packed_values(&packed), before, "under the limit: unchanged");
        let max = norm / 4.0;
        let (packed, again) = clip_global_norm(packed, max);
        assert_eq!(again, norm);
        for (a, b) in packed_values(&packed).iter().zip(&before) {
            assert!(
                (a - b / 4.0).abs() <= 1e-6 * b.abs().max(1e-6),
                "{a} vs {}",
                b / 4.0
            );
        }
        let (_, clipped) = clip_global_norm(packed, 0.0);
        assert!((clipped - max).abs() <= 1e-4 * max, "{clipped} vs {max}");
    }

    #[test]
    fn adding_packed_gradients_adds_every_value() {
        let (model, grads) = model_and_grads();
        let a = Packed::gradients_chunked(&model, grads, 1000);
        let b = Packed::gradients_chunked(&model, grads_of(&model), 1000).scale(0.5);
        let values = packed_values(&a);
        let sum = packed_values(&(a + b));
        for (s, v) in sum.iter().zip(&values) {
            assert!(
                (s - 1.5 * v).abs() <= 1e-6 * v.abs().max(1e-6),
                "{s} vs {v}"
            );
        }
    }

    #[test]
    fn weights_packed_from_one_model_load_into_another() {
        let (source, _) = model_and_grads();
        let device = Default::default();
        B::seed(&device, 11);
        let target = LanguageModel::new(
            Hymba::<B>::new(&HymbaConfig::tiny(), &device).expect("tiny model"),
            None,
        );
        let weights = |m: &LanguageModel<B>| {
            struct Collect(Vec<f64>, Vec<bool>);
            impl ModuleVisitor<B> for Collect {
                fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                    let value = param.val();
                    self.1.push(value.is_require_grad());
                    self.0.extend(value.into_data().iter::<f64>());
                }
            }
            let mut c = Collect(Vec::new(), Vec::new());
            m.visit(&mut c);
            (c.0, c.1)
        };
        let (want, _) = weights(&source);
        let (before, tracked) = weights(&target);
        assert_ne!(before, want, "two seeds, two models");
        let packed = Packed::weights(&source);
        assert_eq!(packed.num_elements(), want.len());
        let loaded = packed.load_weights(target.clone());
        let (got, still_tracked) = weights(&loaded);
        assert_eq!(got, want);
        assert_eq!(still_tracked, tracked);
        assert!(
            tracked.iter().all(|t| *t),
            "trainable parameters require gradients"
        );
        // The loaded model trains: its loss has gradients for every parameter.
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![3i64; 2 * 24], [2, 24]), &device);
        let grads =
            GradientsParams::from_grads(loaded.hymba.forward_loss(ids, None).backward(), &loaded);
        assert_eq!(grads.len(), tracked.len());
    }
}
