//! Moving parameter values in and out of a module in visiting order: the bridge used to copy
//! a model between backends (e.g. the ndarray ⇄ wgpu equivalence check).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// Collects every float parameter's values, in the module's visiting order.
#[derive(Debug, Default)]
pub struct ParamCollector {
    /// The values, one per parameter.
    pub values: Vec<TensorData>,
}

impl<B: Backend> ModuleVisitor<B> for ParamCollector {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.values.push(param.val().into_data());
    }
}

/// Replaces every float parameter's values, in visiting order, with `values`.
#[derive(Debug)]
pub struct ParamLoader<'a, B: Backend> {
    values: std::vec::IntoIter<TensorData>,
    device: &'a B::Device,
    /// Shape mismatches and missing values, reported after the pass.
    pub errors: Vec<String>,
}

impl<'a, B: Backend> ParamLoader<'a, B> {
    /// A loader that hands out `values` in order.
    pub fn new(values: Vec<TensorData>, device: &'a B::Device) -> Self {
        Self {
            values: values.into_iter(),
            device,
            errors: Vec::new(),
        }
    }
}

impl<B: Backend> ModuleMapper<B> for ParamLoader<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let shape = param.dims();
        let Some(data) = self.values.next() else {
            self.errors
                .push(format!("no value for a parameter of shape {shape:?}"));
            return param;
        };
        if data.shape.as_slice() != shape.as_slice() {
            self.errors.push(format!(
                "shape {:?} given for a parameter of shape {shape:?}",
                data.shape.as_slice()
            ));
            return param;
        }
        param.map(|old| {
            let dtype = old.dtype();
            Tensor::<B, D>::from_data(data, self.device)
                .cast(dtype)
                .set_require_grad(old.is_require_grad())
        })
    }
}

/// Every float parameter's values, in visiting order.
pub fn collect<B: Backend, M: Module<B>>(module: &M) -> Vec<TensorData> {
    let mut collector = ParamCollector::default();
    module.visit(&mut collector);
    collector.values
}
