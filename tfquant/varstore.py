"""The variables a conversion creates (int8 weights, embedding tables, scales), shared across signatures.

A SavedModel with a prefill and a decode signature reads every fp32 weight from one variable; the
converted model must do the same with the int8 weights, or it would be twice the size.  Each signature
is converted separately, so the passes ask this store for their new variables: the same content gets
the same ``tf.Variable``, and ``savedmodel.save`` writes each variable once.
"""
from __future__ import annotations

import hashlib
from typing import Dict


class VariableStore:
    def __init__(self):
        self._by_content: Dict[tuple, object] = {}
        self.created = 0
        self.reused = 0

    def variable(self, value, name: str):
        """A non-trainable variable holding ``value`` (numpy or tf.Tensor): an existing one if one holds
        the same dtype, shape and bytes (the first one's name is kept)."""
        import tensorflow as tf

        tensor = tf.convert_to_tensor(value)
        # serialize_tensor has no kernel for quantized dtypes: hash their bytes as the int8 they are
        raw = tf.bitcast(tensor, tf.int8) if tensor.dtype in (tf.qint8, tf.quint8) else tensor
        digest = hashlib.sha256(tf.io.serialize_tensor(raw).numpy()).hexdigest()
        key = (tensor.dtype.name, tuple(tensor.shape), digest)
        found = self._by_content.get(key)
        if found is not None:
            self.reused += 1
            return found
        self.created += 1
        var = tf.Variable(tensor, trainable=False, name=name)
        self._by_content[key] = var
        return var
