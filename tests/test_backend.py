"""fastcsi.backend: resolve_backend and the one switch for a whole model, ``override``."""
import threading
import warnings

import pytest

from fastcsi.backend import FallbackWarning, family_of, fused_enabled, override, requested, resolve_backend
from fastcsi.errors import FastCSIError

AVAILABLE = {"cpu": True, "triton": False}


def test_family_of_the_dispatchers_op_names():
    assert family_of("radius_graph") == "radius"
    assert family_of("frechet_distance") == "frechet"
    assert family_of("covariance") == "covariance"
    assert family_of("gemnet_indices") == "gemnet_indices"
    assert family_of("gemnet_oc.interaction_bilinear") == "interaction"
    assert family_of("activation.silu") == "activation"
    assert family_of("something_else") is None


def test_override_applies_to_auto_and_explicit_arguments_win():
    assert resolve_backend("radius_graph", "auto", "cpu", AVAILABLE, ("cpu",)) == "cpu"
    with override(radius="ref"):
        assert requested("radius_graph") == "ref"
        assert resolve_backend("radius_graph", "auto", "cpu", AVAILABLE, ("cpu",)) == "ref"
        assert resolve_backend("radius_graph", "cpu", "cpu", AVAILABLE, ("cpu",)) == "cpu"
        # other ops keep their own choice
        assert resolve_backend("covariance", "auto", "cpu", AVAILABLE, ("cpu",)) == "cpu"
    assert resolve_backend("radius_graph", "auto", "cpu", AVAILABLE, ("cpu",)) == "cpu"


def test_overrides_nest_and_restore_even_on_errors():
    assert fused_enabled()
    with override(interaction="ref", fused=False):
        with override(interaction="cpu"):
            assert requested("gemnet_oc.interaction_bilinear") == "cpu" and not fused_enabled()
        assert requested("gemnet_oc.interaction_bilinear") == "ref"
        with pytest.raises(ValueError), override(fused=True):
            assert fused_enabled()
            raise ValueError
        assert not fused_enabled()
    assert fused_enabled() and requested("gemnet_oc.interaction_bilinear") == "auto"


def test_an_overridden_backend_that_cannot_run_is_an_error():
    with override(radius="triton"), pytest.raises(FastCSIError, match="not available"):
        resolve_backend("radius_graph", "auto", "cpu", AVAILABLE, ("cpu",), reasons={"triton": "no GPU"})
    with pytest.raises(FastCSIError, match=r"not available on cpu here \(no GPU\)"):
        resolve_backend("radius_graph", "triton", "cpu", AVAILABLE, ("cpu",), reasons={"triton": "no GPU"})


def test_override_rejects_unknown_ops_and_backends():
    with pytest.raises(FastCSIError, match="unknown op"):
        with override(neighbours="ref"):
            pass
    with pytest.raises(FastCSIError, match="not a backend"):
        with override(radius="fast"):
            pass


def test_ref_in_auto_order_is_intended_and_silent_otherwise_a_fallback_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        assert resolve_backend("activation.silu", "auto", "cpu", {"cpu": False}, ("ref",)) == "ref"
    with pytest.warns(FallbackWarning):
        assert resolve_backend("activation.silu", "auto", "cpu", {"cpu": False}, ("cpu",)) == "ref"


def test_an_override_does_not_leak_into_other_threads():
    seen = []
    with override(covariance="ref"):
        thread = threading.Thread(target=lambda: seen.append(requested("covariance")))
        thread.start()
        thread.join()
        assert requested("covariance") == "ref"
    assert seen == ["auto"]
