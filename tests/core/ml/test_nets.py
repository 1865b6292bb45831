"""The five architectures: shapes, features/head contract, they learn, spec errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.ml.data import load_dataset, prepare_data, to_view, view_for_arch
from core.ml.errors import SpecError
from core.ml.nets import build_model

torch.set_num_threads(1)

SMALL = {"linear": [], "mlp": [32], "cnn": [16, 32], "gru": [16], "transformer": [16]}


@pytest.fixture(scope="module")
def digits():
    X, y, shape = load_dataset({"source": "builtin", "name": "digits"})
    return prepare_data(X, y, shape)


@pytest.mark.parametrize("arch", list(SMALL))
def test_shapes_and_head_contract(arch, digits):
    torch.manual_seed(0)
    model = build_model({"arch": arch, "hidden": SMALL[arch], "dropout": 0.0}, 64, 10, (8, 8))
    x = torch.from_numpy(to_view(digits.X_val[:5], view_for_arch(arch), (8, 8)))
    model.eval()
    feats = model.features(x)
    dim = {"linear": 64}.get(arch, SMALL[arch][-1] if SMALL[arch] else 64)
    assert feats.shape == (5, dim)
    assert isinstance(model.head, torch.nn.Linear) and model.head.weight.shape == (10, dim)
    assert torch.allclose(model(x), model.head(feats))


@pytest.mark.parametrize("arch", list(SMALL))
def test_every_arch_learns_on_digits(arch, digits):
    torch.manual_seed(0)
    model = build_model({"arch": arch, "hidden": SMALL[arch], "dropout": 0.1}, 64, 10, (8, 8))
    x = torch.from_numpy(to_view(digits.X_train[:256], view_for_arch(arch), (8, 8)))
    y = torch.from_numpy(digits.y_train[:256])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_binary_head_and_spec_errors():
    model = build_model({"arch": "mlp", "hidden": [8]}, 30, 2, None, "binary")
    assert model.head.out_features == 1
    with pytest.raises(SpecError, match="exactly 2 classes"):
        build_model({"arch": "mlp", "hidden": [8]}, 64, 10, None, "binary")
    with pytest.raises(SpecError, match="divisible"):
        build_model({"arch": "transformer", "hidden": [6]}, 64, 10, (8, 8))
    with pytest.raises(SpecError, match="'cnn'"):
        build_model({"arch": "cnn", "hidden": [8]}, 4, 3, None)
    with pytest.raises(SpecError, match="gru"):
        build_model({"arch": "gru", "hidden": [8]}, 13, 3, None)
    with pytest.raises(SpecError, match="dropout"):
        build_model({"arch": "mlp", "hidden": [8], "dropout": 1.0}, 4, 3, None)


def test_gru_and_transformer_layers_follow_hidden():
    gru = build_model({"arch": "gru", "hidden": [12, 12, 12]}, 64, 10, (8, 8))
    assert gru.gru.num_layers == 3 and gru.gru.hidden_size == 12
    tr = build_model({"arch": "transformer", "hidden": [16, 16]}, 64, 10, (8, 8))
    assert len(tr.encoder.layers) == 2 and tr.pos.shape == (1, 9, 16)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
def test_conv_nets_train_channels_last_on_the_cpu(digits):
    from core.ml.placement import prepare_model_for

    torch.manual_seed(0)
    model = build_model({"arch": "cnn", "hidden": [16, 32]}, 64, 10, (8, 8))
    plain = build_model({"arch": "cnn", "hidden": [16, 32]}, 64, 10, (8, 8))
    plain.load_state_dict(model.state_dict())
    prepare_model_for(model, torch.device("cpu"))
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]  # 16 in-channels
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    x = torch.from_numpy(to_view(digits.X_val[:7], view_for_arch("cnn"), (8, 8)))
    model.eval()
    plain.eval()
    assert torch.allclose(model(x), plain(x), atol=1e-5)
    mlp = build_model({"arch": "mlp", "hidden": [8]}, 64, 10, None)
    prepare_model_for(mlp, torch.device("cpu"))
    assert all(p.is_contiguous() for p in mlp.parameters())
