//! The warp kernels' plane (warp) operations — shuffles, plane sums, the scan of one pair
//! per lane — each with an emulated form: a round trip through shared memory between two
//! barriers, so that the same kernels run (slowly, with every index and carry of the real
//! ones) on devices without plane operations, which is how CI checks them on lavapipe.

use super::launch::PLANE;

// `div_ceil` is not a cube function.
#[allow(clippy::manual_div_ceil)]
pub(crate) mod cube {
    use cubecl::prelude::*;

    use super::PLANE;

    /// Lane `src`'s `(a, b)`, a unit's own where `src` is out of the plane (as CUDA's
    /// shuffles). This and the functions below are the kernels' plane operations: with
    /// `emulate` each goes through `buf` (`2 · units` floats, `units` = the cube's) between
    /// two barriers, for devices without plane operations, so every unit of the cube must
    /// call them. Lanes are `UNIT_POS_X mod 32` either way (a plane is 32 consecutive units
    /// on CUDA).
    #[cube]
    pub fn lane_pair(
        a: f32,
        b: f32,
        src: u32,
        buf: &mut SharedMemory<f32>,
        #[comptime] units: usize,
        #[comptime] emulate: bool,
    ) -> (f32, f32) {
        if emulate {
            let unit = UNIT_POS_X as usize;
            buf[unit] = a;
            buf[units + unit] = b;
            sync_cube();
            let from = unit - unit % comptime!(PLANE) + src as usize;
            let va = buf[from];
            let vb = buf[units + from];
            sync_cube();
            (va, vb)
        } else {
            (plane_shuffle(a, src), plane_shuffle(b, src))
        }
    }

    /// Lane `src`'s `x`; see [`lane_pair`].
    #[cube]
    pub fn lane_value(
        x: f32,
        src: u32,
        buf: &mut SharedMemory<f32>,
        #[comptime] units: usize,
        #[comptime] emulate: bool,
    ) -> f32 {
        if emulate {
            let (v, _w) = lane_pair(x, x, src, buf, units, emulate);
            v
        } else {
            plane_shuffle(x, src)
        }
    }

    /// Lane `l − d`'s `(a, b)` (a unit's own below `d`), or with `down` lane `l + d`'s (its
    /// own past the plane); see [`lane_pair`].
    #[cube]
    pub fn lane_shift(
        a: f32,
        b: f32,
        d: u32,
        buf: &mut SharedMemory<f32>,
        #[comptime] down: bool,
        #[comptime] units: usize,
        #[comptime] emulate: bool,
    ) -> (f32, f32) {
        if emulate {
            let l = UNIT_POS_X % comptime!(PLANE as u32);
            let mut src = l;
            if down {
                if l + d < comptime!(PLANE as u32) {
                    src = l + d;
                }
            } else if l >= d {
                src = l - d;
            }
            lane_pair(a, b, src, buf, units, emulate)
        } else if down {
            (plane_shuffle_down(a, d), plane_shuffle_down(b, d))
        } else {
            (plane_shuffle_up(a, d), plane_shuffle_up(b, d))
        }
    }

    /// The sum of `x` over the plane, on every lane; see [`lane_pair`].
    #[cube]
    pub fn lane_sum(
        x: f32,
        buf: &mut SharedMemory<f32>,
        #[comptime] units: usize,
        #[comptime] emulate: bool,
    ) -> f32 {
        if emulate {
            let l = UNIT_POS_X % comptime!(PLANE as u32);
            let mut v = x;
            let mut d = 1u32;
            for _round in 0..comptime!(PLANE.trailing_zeros()) {
                v += lane_value(v, l ^ d, buf, units, emulate);
                d *= 2;
            }
            v
        } else {
            plane_sum(x)
        }
    }

    /// Inclusive scan of one pair per lane under `(a₂, b₂) ∘ (a₁, b₁) = (a₂a₁, a₂b₁ + b₂)`:
    /// lane l composes lanes 0..=l, or with `reverse` lanes l..; Kogge–Stone, log₂ 32
    /// rounds; see [`lane_pair`].
    #[cube]
    pub fn lane_scan(
        a: f32,
        b: f32,
        buf: &mut SharedMemory<f32>,
        #[comptime] reverse: bool,
        #[comptime] units: usize,
        #[comptime] emulate: bool,
    ) -> (f32, f32) {
        let l = UNIT_POS_X % comptime!(PLANE as u32);
        let mut a = a;
        let mut b = b;
        let mut d = 1u32;
        // Unrolled for the shuffles; a loop when emulated (each round is two barriers:
        // unrolled, lavapipe's compiler took minutes over the kernels).
        #[unroll(!emulate)]
        for _round in 0..comptime!(PLANE.trailing_zeros()) {
            let (an, bn) = lane_shift(a, b, d, buf, reverse, units, emulate);
            let mut has = l >= d;
            if reverse {
                has = l + d < comptime!(PLANE as u32);
            }
            if has {
                b += a * bn;
                a *= an;
            }
            d *= 2;
        }
        (a, b)
    }
}
