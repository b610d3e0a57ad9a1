//! What the row-wise CubeCL kernels (masked softmax, RMS norm, conv + SiLU) share: the
//! launch grid, output buffers, and the cube-wide reduction through shared memory.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::CubeCount;

/// FNV-1a of `bytes`, at compile time: the kernels' source fingerprints. CubeCL's persistent
/// kernel cache keys a kernel by its type name and comptime values only, so every kernel
/// takes a fingerprint of its source as a comptime value.
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The most cubes along one grid dimension that every runtime takes (wgpu's limit); cubes
/// beyond it go to the grid's second dimension.
pub const GRID_MAX: usize = 65_535;

/// The grid for `cubes` cubes, `(count, grid_x)`: cube `CUBE_POS_Y · grid_x + CUBE_POS_X`
/// (kernels guard the last row of the grid, which may run past `cubes`).
pub fn grid(cubes: usize) -> (CubeCount, u32) {
    let x = cubes.clamp(1, GRID_MAX);
    (
        CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1),
        x as u32,
    )
}

/// An uninitialised contiguous buffer on `like`'s device.
pub fn alloc<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, dtype)
}

pub mod cube {
    use cubecl::prelude::*;

    /// The cube's maximum (`op_max`) or sum of each unit's `v`, through `smem` (one slot per
    /// unit; the cube's size a power of two).
    #[cube]
    pub fn cube_reduce(
        smem: &mut SharedMemory<f32>,
        v: f32,
        lane: usize,
        #[comptime] op_max: bool,
    ) -> f32 {
        smem[lane] = v;
        sync_cube();
        // A runtime count: a comptime one, halved in the loop, was folded at expansion and
        // left the reduction undone (every row's P came out wrong).
        let mut half = (CUBE_DIM_X / 2) as usize;
        while half > 0 {
            if lane < half {
                let other = smem[lane + half];
                if op_max {
                    if other > smem[lane] {
                        smem[lane] = other;
                    }
                } else {
                    smem[lane] += other;
                }
            }
            sync_cube();
            half /= 2;
        }
        let r = smem[0];
        sync_cube();
        r
    }
}
