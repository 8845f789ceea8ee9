"""Session fixtures: one tiny random GPT-J SavedModel (built once, ~15 s) and its conversions."""
import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TINY_CONFIG = os.path.join(ROOT, "configs", "gptj-tiny.yaml")


@pytest.fixture(scope="session")
def tiny_gptj(tmp_path_factory):
    from tfquant.models import prepare_from_config

    out = str(tmp_path_factory.mktemp("models") / "tiny_gptj")
    prepare_from_config(TINY_CONFIG, out)
    return out


def _convert(tmp_path_factory, src, name, **kwargs):
    from tfquant.convert import ConvertSavedModel

    out = str(tmp_path_factory.mktemp("conv") / name)
    kwargs.setdefault("calib_samples", 4)
    kwargs.setdefault("seq_len", 32)
    report = ConvertSavedModel(src, out, progress=False, **kwargs)
    return out, report


@pytest.fixture(scope="session")
def qdq_default(tmp_path_factory, tiny_gptj):
    return _convert(tmp_path_factory, tiny_gptj, "qdq_default", output_format="qdq")


@pytest.fixture(scope="session")
def qdq_performance(tmp_path_factory, tiny_gptj):
    return _convert(tmp_path_factory, tiny_gptj, "qdq_perf", output_format="qdq", performance_only=True)


@pytest.fixture(scope="session")
def qdq_itex(tmp_path_factory, tiny_gptj):
    return _convert(tmp_path_factory, tiny_gptj, "qdq_itex", itex_mode=True)


@pytest.fixture(scope="session")
def int8_default(tmp_path_factory, tiny_gptj):
    return _convert(tmp_path_factory, tiny_gptj, "int8_default")


@pytest.fixture(scope="session")
def convert(tmp_path_factory, tiny_gptj):
    """Convert the tiny GPT-J with the given options into a fresh folder."""
    def run(name, **kwargs):
        return _convert(tmp_path_factory, tiny_gptj, name, **kwargs)
    return run


@pytest.fixture(scope="session")
def random_batch():
    import numpy as np

    rs = np.random.RandomState(1)
    ids = rs.randint(0, 50400, size=(4, 24)).astype("int32")
    return ids, np.ones_like(ids)


def run_logits(model_dir, batch):
    import tensorflow as tf

    ids, mask = batch
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    return fn(input_ids=tf.constant(ids), attention_mask=tf.constant(mask))["logits"].numpy()
