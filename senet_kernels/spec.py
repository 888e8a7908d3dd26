"""The vocabulary of the SE op: activation and gate names, and their integer codes.

Every backend refers to activations and gates by these names (the public API and the op
schema take strings); the Triton kernels branch on the integer codes.
"""

ACTIVATIONS = ("relu", "silu")
GATES = ("sigmoid", "hardsigmoid")

#: Integer code of each activation / gate, as passed to the kernels.
ACTIVATION_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}
GATE_CODE = {name: code for code, name in enumerate(GATES)}


def _check_name(option, value):
    # A non-string (a list, None) must not reach the dict lookup: an unhashable value would
    # raise a TypeError that does not name the option.
    if not isinstance(value, str):
        raise TypeError(f"{option} must be a str, got {type(value).__name__}")


def check_activation(activation):
    _check_name("activation", activation)
    if activation not in ACTIVATION_CODE:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def check_gate(gate):
    _check_name("gate", gate)
    if gate not in GATE_CODE:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    return gate


def check_post_relu(post_relu):
    """post_relu must be a real bool: a string such as "no" would be truthy."""
    if not isinstance(post_relu, bool):
        raise TypeError(f"post_relu must be a bool, got {type(post_relu).__name__}")
    return post_relu
