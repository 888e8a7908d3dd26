"""The vocabulary of the SE op: activation and gate names, and their integer codes.

Every backend refers to activations and gates by these names (the public API and the op
schema take strings); the Triton kernels branch on the integer codes.
"""

ACTIVATIONS = ("relu", "silu")
GATES = ("sigmoid", "hardsigmoid")

#: Integer code of each activation / gate, as passed to the kernels.
ACTIVATION_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}
GATE_CODE = {name: code for code, name in enumerate(GATES)}


def check_activation(activation):
    if activation not in ACTIVATION_CODE:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def check_gate(gate):
    if gate not in GATE_CODE:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    return gate
