"""Write the inlined serving graph of a SavedModel (weights stay variables, nothing is frozen).

    python tools/dump_graph_from_saved_model.py --input_model DIR [--signature NAME] [--output dumped_graph.pb]

DIR is a SavedModel folder or one holding saved_model/<version>/ (Hugging Face's export), as for tfquant.quantize.
"""
import argparse
import os
import sys

import _bootstrap  # noqa: F401

from tfquant.errors import UserError, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_model", required=True)
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--output", default="dumped_graph.pb", help="ends in .pbtxt for text format")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:
        raise UserError(f"output {args.output} already exists (pass --overwrite to replace it)")
    from tfquant import savedmodel
    from tfquant.graph import Graph
    from tfquant.graphio import write_graph_def
    from tfquant.modeldir import locate

    model = savedmodel.extract(locate(args.input_model).saved_model, args.signature)
    write_graph_def(args.output, model.graph_def, as_text=args.output.endswith(".pbtxt"))
    hist = Graph(model.graph_def).op_histogram()
    print(f"wrote {args.output}: {len(model.graph_def.node)} nodes, {len(model.captures)} captured variables/constants")
    print("ops: " + ", ".join(f"{op} {n}" for op, n in list(hist.items())[:12]) + (" ..." if len(hist) > 12 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
