"""Every private Keras, TensorFlow and Horovod use is in hvd_keras/_compat.py, and each is checked at import."""

import os
import re

import pytest
from conftest import ROOT

from hvd_keras import _compat


def test_every_private_use_is_present_in_the_installed_versions():
    missing = [what for what, probe, _ in _compat._PRIVATE_USES if not probe()]
    assert not missing


def test_a_missing_one_is_one_line_naming_it_and_the_supported_range(monkeypatch):
    monkeypatch.setattr(_compat, "_PRIVATE_USES", [*_compat._PRIVATE_USES, ("Keras.vanished", lambda: False, "x")])
    with pytest.raises(ImportError) as e:
        _compat.check()
    assert "lacks Keras.vanished" in str(e.value) and _compat.SUPPORTED in str(e.value)
    assert "\n" not in str(e.value)


def test_no_other_module_reaches_into_keras_or_tensorflow_internals():
    internal = re.compile(r"^\s*(from|import)\s+(keras\.src|tensorflow\.python|tensorflow\.core|horovod\.common)")
    offenders = []
    for directory, _, files in os.walk(os.path.join(ROOT, "hvd_keras")):
        for name in files:
            path = os.path.join(directory, name)
            if name.endswith(".py") and not path.endswith(os.path.join("hvd_keras", "_compat.py")):
                offenders += [f"{path}:{i}" for i, line in enumerate(open(path), 1) if internal.match(line)]
    assert not offenders
