"""Read and write GraphDefs as .pb or .pbtxt, atomically, with clear errors for bad files."""
from __future__ import annotations

import os

from .errors import UserError
from .fsutil import atomic_write_bytes


def read_graph_def(path: str):
    from google.protobuf import message, text_format
    from tensorflow.core.framework import graph_pb2

    if not os.path.isfile(path):
        raise UserError(f"graph file not found: {path}")
    graph_def = graph_pb2.GraphDef()
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        if path.endswith(".pbtxt"):
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        kind = "text" if path.endswith(".pbtxt") else "binary"
        raise UserError(f"{path} is not a valid {kind} GraphDef: {str(exc).splitlines()[0] if str(exc) else 'decode error'}") from None
    if not graph_def.node:
        raise UserError(f"{path} holds no graph nodes (not a GraphDef, or empty)")
    return graph_def


def write_graph_def(path: str, graph_def, as_text: bool) -> None:
    from google.protobuf import text_format

    data = text_format.MessageToString(graph_def).encode() if as_text else graph_def.SerializeToString(deterministic=True)
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UserError(f"folder of output {path} does not exist")
    atomic_write_bytes(path, data)
