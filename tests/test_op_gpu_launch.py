"""The kernels with the launch settings they get on an H100, checked on CPU in the interpreter.

Launch settings depend on the device: on a GPU the batch-norm kernels take 4096-element tiles and
~2 programs per SM, instance norm and bias_act split planes/rows until every SM has work; under
``TRITON_INTERPRET=1`` the launchers pick small tiles and few programs so the interpreter stays
quick. The other op tests therefore check the *CPU* tilings' numerics; the GPU tilings (more,
shorter programs, multi-tile loops, split reductions with many partials) are only compiled for
sm_90 in CI. Here each launcher is told it is on a 132-SM GPU and the results are compared with the
float64 reference at moderate shapes, so a tiling bug shows up before any GPU time is spent.
"""
import pytest
import torch

import fastgan.ops._batch_norm_triton as bn_mod
import fastgan.ops._bias_act_triton as ba_mod
import fastgan.ops._instance_norm_triton as in_mod
from test_op_batch_norm_act import _check_against_ref, _make
from test_op_bias_act import _check as _check_bias_act
from test_op_instance_norm_act import _check as _check_instance_norm

pytestmark = [pytest.mark.usefixtures("one_thread")]
H100_SMS = 132


@pytest.fixture(autouse=True)
def _h100_launch_settings(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("on a GPU the real launch settings are tested by the other op tests")
    monkeypatch.setattr(in_mod, "CPU_PROGRAMS", in_mod.PROGRAMS_PER_SM * H100_SMS)
    monkeypatch.setattr(ba_mod, "CPU_PROGRAMS", ba_mod.PROGRAMS_PER_SM * H100_SMS)


def _bn_on_gpu(monkeypatch, sms: int):
    real = bn_mod.launch_config

    def bn_config(x3):
        N, C, S = x3.shape
        channels_contiguous = x3.stride(1) == 1 and C > 1 and not (S > 1 and x3.stride(2) == 1)
        return real(N, C, S, channels_contiguous, True, sms)

    monkeypatch.setattr(bn_mod, "_config_for", bn_config)


# sms=2 gives the GPU tiling with fewer programs than tiles, so the kernels' tile loops run several
# times at shapes the interpreter gets through quickly (at 132 SMs that needs a DCGAN-sized batch).
@pytest.mark.parametrize("shape,cl,act,sms,training,dtype", [
    ((16, 64, 8, 8), False, "relu", 2, True, torch.float32),     # NCHW: BLOCK_S along HW, 4 tiles per program
    ((16, 64, 8, 8), True, "lrelu", 2, True, torch.float32),     # channels_last: BLOCK_C along the contiguous dim
    ((16, 64, 8, 8), True, "lrelu", 2, True, torch.bfloat16),    # what the engine runs on a GPU
    ((16, 64, 8, 8), True, "lrelu", 2, False, torch.float32),    # eval: running statistics, same pointwise tiling
    ((8, 512, 4, 4), True, "tanh", H100_SMS, True, torch.float32),   # DCGAN D's last block: channel blocks
    ((8, 512, 4, 4), False, "relu", H100_SMS, True, torch.float16),
    ((300, 100), False, "relu", 2, True, torch.float32),         # BatchNorm1d, rows not a multiple of BLOCK_N
])
def test_batch_norm_act_with_gpu_tiling(monkeypatch, shape, cl, act, sms, training, dtype):
    _bn_on_gpu(monkeypatch, sms)
    S = 1 if len(shape) == 2 else shape[2] * shape[3]
    cfg = bn_mod.launch_config(shape[0], shape[1], S, cl or len(shape) == 2, True, sms)
    assert cfg.BLOCK_C * cfg.BLOCK_N * cfg.BLOCK_S > 256, "not the GPU tiling"
    assert sms == H100_SMS or cfg.red_tiles_per_prog > 1, "the tile loop is what sms=2 is for"
    x, w, b, rm, rv, dy = _make(shape, dtype, cl, True, kinks=act != "tanh")
    _check_against_ref(x, w, b, rm, rv, dy, training=training, act=act)


@pytest.mark.parametrize("shape,cl,dtype", [((1, 3, 96, 96), False, torch.float32), ((2, 24, 32, 32), True, torch.float32),
                                            ((2, 2, 80, 80), False, torch.float32), ((2, 24, 32, 32), True, torch.bfloat16)])
def test_instance_norm_act_with_gpu_splits(shape, cl, dtype):
    launch = in_mod._launch(shape[0], shape[1], shape[2] * shape[3], cl, torch.device("cpu"))
    assert launch.splits > 1, "the plane split is what this test is for"
    torch.manual_seed(0)
    x = torch.randn(shape) * 2 + 0.5
    if cl:
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
    _check_instance_norm(x.to(dtype), w, b, "lrelu", dtype)


@pytest.mark.parametrize("shape,cl,act,dtype", [((16, 64, 8, 8), False, "lrelu", torch.float32),
                                                ((16, 64, 8, 8), True, "silu", torch.float32),
                                                ((16, 64, 8, 8), True, "lrelu", torch.bfloat16),
                                                ((512, 300), False, "tanh", torch.float32)])
def test_bias_act_with_gpu_programs(shape, cl, act, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    _check_bias_act(x, torch.randn(shape[1]), 1, act, 1.0, None, dtype)
