"""Every node tfquant inserts is named here, in the reference (INC) scheme, so names never drift."""


def _unique(tensor: str) -> str:
    # INC's unique_node_name_from_input: a tensor name made safe to embed in a node name.
    return tensor.replace(":", "__port__").replace("^", "__hat__")


def act_quantize(op: str, tensor: str) -> str:
    return f"{op}_eightbit_quantize_{_unique(tensor)}"


def act_min(op: str, tensor: str) -> str:
    return f"{op}_eightbit_min_{_unique(tensor)}/frozen_min_only"


def act_max(op: str, tensor: str) -> str:
    return f"{op}_eightbit_max_{_unique(tensor)}/frozen_max_only"


def act_dequantize(op: str, input_index: int) -> str:
    return f"{op}_dequantize" if input_index == 0 else f"{op}_dequantize_{input_index}"


def weight_quantize(weight_node: str) -> str:
    return f"{weight_node}_qint8_const_quant"


def weight_min(weight_node: str) -> str:
    return f"{weight_node}_qint8_const_quant/min"


def weight_max(weight_node: str) -> str:
    return f"{weight_node}_qint8_const_quant/max"


def weight_dequantize(weight_node: str) -> str:
    return f"{weight_node}__dequant"


def outlier_prefix(op: str) -> str:
    return f"{op}_fp32_outlier_channels"


# The pieces of one op's outlier split (rewrite.split_outliers): the channel indices, their fp32 weight rows
# [k, N], and the weight with those rows zeroed that the int8 kernel quantizes.
def outlier_channels(op: str) -> str:
    return f"{outlier_prefix(op)}/channels"


def outlier_weight(op: str) -> str:
    return f"{outlier_prefix(op)}/weight"


def outlier_masked_weight(op: str) -> str:
    return f"{outlier_prefix(op)}/masked_weight"


def outlier_op_of_masked_weight(tensor: str):
    """The op whose outlier split made ``tensor`` (its masked weight), else None."""
    suffix = outlier_masked_weight("")
    return tensor[: -len(suffix)] if tensor.endswith(suffix) else None


def per_token_prefix(op: str) -> str:
    return f"{op}_per_token_scale"


def fused_matmul(first_op: str) -> str:
    return f"{first_op}_fused"
