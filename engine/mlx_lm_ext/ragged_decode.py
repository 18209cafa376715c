"""One decode step's attention for a whole left-padded batch in one CUDA kernel, each row over its own
keys only (MLX's CUDA backend).

MLX's fused attention for one query token takes no array mask, so a padded batch either ran unfused
under mlx-lm's mask or, row by row (decode_rows.py), as one fused call per run of rows: with agents'
histories all of different lengths that is a call per row and layer, and the calls' own cost ate the
gain. This is MLX's own one-pass vector kernel (mlx/backend/cuda/scaled_dot_product_attention.cu,
`kernel_sdpav_1pass`) with one change: each row starts reading keys at its own first real token, given
per row in `starts`. A block per (query head, row), a warp per 32nd key, online softmax in float32.

The kernel is compiled the first time it is wanted, and checked against MLX's attention, row by row,
the first time each dtype, head size and head grouping meets it; where either fails (another MLX, a
head size it does not take) decode_rows.py keeps its calls per row.
"""

from __future__ import annotations

import logging

from engine.backend import installed_backend

log = logging.getLogger(__name__)

WARPS = 32  # warps per block, each reading every 32nd key; also the lanes that hold a head's dimensions
HEAD_DIMS = (64, 96, 128, 256)

HEADER = """
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float ragged_warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffff, x, offset);
  return x;
}

__device__ __forceinline__ float ragged_warp_max(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, offset));
  return x;
}
"""

# Template arguments: T (the dtype), D (head size), GQA (query heads per key/value head).
# Grid: blockIdx.x the query head, blockIdx.z the row; 1,024 threads: warp w reads keys start+w, +32, ...
SOURCE = """
  constexpr int PER_LANE = D / 32;
  const int head = blockIdx.x;
  const int row = blockIdx.z;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int heads = gridDim.x;
  const int key_count = k_shape[2];
  const float scale_log2 = scale[0] * 1.4426950408889634f;

  const T* Q = q + row * q_strides[0] + head * q_strides[1];
  const T* K = k + row * k_strides[0] + (head / GQA) * k_strides[1];
  const T* V = v + row * v_strides[0] + (head / GQA) * v_strides[1];

  float query[PER_LANE];
  float acc[PER_LANE];
  for (int i = 0; i < PER_LANE; i++) {
    query[i] = scale_log2 * static_cast<float>(Q[PER_LANE * lane + i]);
    acc[i] = 0.f;
  }
  float max_score = -3.0e38f;
  float sum_exp = 0.f;
  for (int key = starts[row] + warp; key < key_count; key += 32) {
    const T* key_row = K + key * k_strides[2];
    const T* value_row = V + key * v_strides[2];
    float score = 0.f;
    for (int i = 0; i < PER_LANE; i++) {
      score += query[i] * static_cast<float>(key_row[PER_LANE * lane + i]);
    }
    score = ragged_warp_sum(score);
    const float new_max = fmaxf(max_score, score);
    const float factor = exp2f(max_score - new_max);
    const float weight = exp2f(score - new_max);
    max_score = new_max;
    sum_exp = sum_exp * factor + weight;
    for (int i = 0; i < PER_LANE; i++) {
      acc[i] = acc[i] * factor + weight * static_cast<float>(value_row[PER_LANE * lane + i]);
    }
  }

  __shared__ float partial[32][33];
  __shared__ float warp_max[32];
  __shared__ float warp_sum[32];
  if (lane == 0) {
    warp_max[warp] = max_score;
    warp_sum[warp] = sum_exp;
  }
  __syncthreads();
  // Lane l now speaks for warp l: its share rescaled to the block's maximum.
  const float lane_max = warp_max[lane];
  const float block_max = ragged_warp_max(lane_max);
  const float lane_factor = exp2f(lane_max - block_max);
  const float total = ragged_warp_sum(warp_sum[lane] * lane_factor);
  const float inverse = total == 0.f ? 0.f : 1.f / total;

  T* O = out + (row * heads + head) * D;
  for (int i = 0; i < PER_LANE; i++) {
    partial[lane][warp] = acc[i];
    __syncthreads();
    // Warp w sums dimension PER_LANE * w + i over the 32 warps.
    const float summed = ragged_warp_sum(partial[warp][lane] * lane_factor) * inverse;
    if (lane == 0) {
      O[PER_LANE * warp + i] = static_cast<T>(summed);
    }
    __syncthreads();
  }
"""

_kernel = None
_built: bool | None = None  # None: not tried yet
_checked: dict[tuple, bool] = {}  # (dtype, head size, query heads per key head): whether it agreed with MLX
_scales: dict[float, object] = {}


def _build():
    import mlx.core as mx

    return mx.fast.cuda_kernel(
        name="agent_memory_ragged_decode_attention",
        input_names=["q", "k", "v", "starts", "scale"],
        output_names=["out"],
        source=SOURCE,
        header=HEADER,
        ensure_row_contiguous=False,
    )


def attend(queries, keys, values, scale: float, starts):
    """Attention of one query token per row over keys[row, :, starts[row]:] (queries (B, H, 1, D), keys
    and values (B, H_kv, L, D), starts (B,) int32 on the device)."""
    import mlx.core as mx

    batch, heads, _, dim = queries.shape
    scale_array = _scales.get(scale)
    if scale_array is None:
        scale_array = _scales[scale] = mx.array([scale], dtype=mx.float32)
    return _kernel(
        inputs=[queries, keys, values, starts, scale_array],
        template=[("T", queries.dtype), ("D", dim), ("GQA", heads // keys.shape[1])],
        grid=(heads * WARPS * 32, 1, batch),
        threadgroup=(WARPS * 32, 1, 1),
        output_shapes=[queries.shape],
        output_dtypes=[queries.dtype],
    )[0]


def takes(queries, keys, values, kwargs: dict) -> bool:
    """Whether this kernel takes the step: one query token, a head size it knows, whole key/value head
    groups, one dtype for all three, no attention sinks, and the kernel built and checked on this device
    for this dtype, head size and grouping."""
    if kwargs or queries.shape[2] != 1 or queries.shape[3] not in HEAD_DIMS or values.shape[3] != queries.shape[3]:
        return False
    if queries.shape[1] % keys.shape[1] != 0 or not queries.dtype == keys.dtype == values.dtype:
        return False
    return usable(queries.dtype, queries.shape[3], queries.shape[1] // keys.shape[1])


def usable(dtype, dim: int, group: int) -> bool:
    """The kernel compiled (once per process; never on other backends than CUDA) and agreed with MLX's
    attention on this device for `dtype`, head size `dim` and `group` query heads per key/value head
    (checked once per such kind)."""
    global _kernel, _built
    if _built is None:
        _built = False
        if installed_backend() == "cuda":
            try:
                _kernel = _build()
                _built = True
            except Exception as exc:  # noqa: BLE001 - any failure keeps the calls per row
                log.info("decode attention keeps a call per row: the batch kernel failed to build (%s)", exc)
    if not _built:
        return False
    kind = (dtype, dim, group)
    if kind not in _checked:
        try:
            _checked[kind] = _agrees_with_mlx(*kind)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the calls per row
            log.info("decode attention keeps a call per row: the batch kernel failed to run (%s)", exc)
            _checked[kind] = False
        else:
            if not _checked[kind]:
                log.warning("decode attention keeps a call per row: the batch kernel disagreed with MLX's (%s)", kind)
    return _checked[kind]


def _agrees_with_mlx(dtype, dim: int, group: int) -> bool:
    """The kernel's output against MLX's fused attention on each row's own keys, on random rows of
    different paddings (a key count past one block's warps)."""
    import mlx.core as mx

    batch, kv_heads, keys_len = 3, 2, 300
    heads = kv_heads * group
    starts = [0, 45, 290]
    # Keys of their own: the global random state belongs to the requests' sampling
    queries, keys, values = (
        mx.random.normal((batch, n, length, dim), key=mx.random.key(seed)).astype(dtype)
        for seed, n, length in ((1, heads, 1), (2, kv_heads, keys_len), (3, kv_heads, keys_len))
    )
    scale = dim**-0.5
    ours = attend(queries, keys, values, scale, mx.array(starts, dtype=mx.int32))
    expected = mx.concatenate(
        [
            mx.fast.scaled_dot_product_attention(
                queries[r : r + 1], keys[r : r + 1, :, s:], values[r : r + 1, :, s:], scale=scale
            )
            for r, s in enumerate(starts)
        ],
        axis=0,
    )
    difference = mx.abs(ours.astype(mx.float32) - expected.astype(mx.float32)).max().item()
    return difference <= (1e-3 if dtype == mx.float32 else 2e-2)
