import logging

import pytest
import torch

import cellvi as cv
from cellvi.lifecycle.runtime import inference_device


def test_device_setting_controls_inference_device():
    try:
        cv.settings.device = "cpu"
        assert inference_device(None) == torch.device("cpu")
        with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda'"):
            cv.settings.device = "tpu"
        assert cv.settings.device == "cpu"
    finally:
        cv.settings.device = "auto"


def test_verbosity_and_threads():
    before = torch.get_num_threads()
    try:
        cv.settings.verbosity = 1
        assert logging.getLogger("cellvi").level == logging.WARNING
        cv.settings.n_threads = 1
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="positive"):
            cv.settings.n_threads = 0
        with pytest.raises(ValueError, match="verbosity"):
            cv.settings.verbosity = 7
    finally:
        cv.settings.verbosity = 2
        cv.settings.n_threads = None
        torch.set_num_threads(before)
    assert "device='auto'" in repr(cv.settings)


def test_native_kernels_setting(monkeypatch):
    monkeypatch.setattr(cv.settings, "_native_kernels", True)
    cv.settings.native_kernels = False
    assert "native_kernels=False" in repr(cv.settings)
    with pytest.raises(ValueError, match="True or False"):
        cv.settings.native_kernels = "yes"
    assert cv.settings.native_kernels is False
