"""Convert a GraphDef between binary (.pb) and text (.pbtxt); lossless both ways.

    python tools/pb_to_pbtxt.py graph.pb [graph.pbtxt]      # binary -> text
    python tools/pb_to_pbtxt.py graph.pbtxt [graph.pb]      # text -> binary
"""
import argparse
import os
import sys

import _bootstrap  # noqa: F401

from tfquant.errors import UserError, run_cli
from tfquant.graphio import read_graph_def, write_graph_def


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help=".pb or .pbtxt GraphDef")
    p.add_argument("output", nargs="?", help="default: the input name with the other extension")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    to_text = not args.input.endswith(".pbtxt")
    out = args.output or os.path.splitext(args.input)[0] + (".pbtxt" if to_text else ".pb")
    if os.path.exists(out) and not args.overwrite:
        raise UserError(f"output {out} already exists (pass --overwrite to replace it)")
    graph_def = read_graph_def(args.input)
    write_graph_def(out, graph_def, as_text=to_text)
    print(f"wrote {out} ({len(graph_def.node)} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
