"""The vocabulary of the SE op: activation and gate names, and their integer codes.

Every backend refers to activations and gates by these names (the public API and the op
schema take strings); the kernels branch on the integer codes. Every branch names each code
explicitly and fails on an unknown one (no "else: the other one").

How to add an activation (e.g. "gelu") or a gate (e.g. "tanh"-style) -- the places to touch:

1. Here: append the name to ACTIVATIONS / GATES. Codes are positions: append, never reorder.
2. ``reference.py``: ``activate`` / ``apply_gate`` with the PyTorch op. The reference is the
   contract, NaN and Inf included, for every other backend.
3. ``triton/common.py``: a code constant, and a case in ``activate`` + ``activate_backward``
   (or ``apply_gate`` + ``gate_backward``, the latter written from s = gate(z): the backward
   keeps no z; a gate whose derivative cannot be had from its value needs z saved instead).
   Write each formula and derivative as PyTorch's kernel does, and any derivative that is 0
   somewhere as a select, not a product (so an Inf gradient gives 0 there, as in PyTorch).
4. ``csrc/se.h``: an enumerator of ``Activation`` / ``Gate`` with the same code, and its name
   in the table of ``csrc/se_common.cpp`` (kActivationNames / kGateNames).
5. ``csrc/se_math.h``: a case in ``activate`` + ``activate_backward`` (``apply_gate`` +
   ``gate_backward``), the same formulas as step 3 (the CPU and CUDA kernels share them);
   ``csrc/cpu/se_cpu.cpp``: a case in ``activate_out`` / ``apply_gate_`` (ATen's op for the
   batched path). A missing case is a build error (-Werror=switch, setup.py).
6. ``baselines.py`` (the benchmarks' eager block) and, to convert existing modules,
   ``modules.py``'s maps from nn / timm layer types to names.

The tests take the names from here (tests/cases.py VARIANTS, tests/test_properties.py), and
tests/test_variant_codes.py checks that the C++ codes equal these and that every backend knows
every name.
"""

#: "gelu" is nn.GELU() (the erf form), "gelu_tanh" nn.GELU(approximate="tanh"), "hardswish"
#: nn.Hardswish(), "leaky_relu" nn.LeakyReLU() (its default negative slope,
#: ``LEAKY_RELU_SLOPE``; other slopes are not supported).
ACTIVATIONS = ("relu", "silu", "gelu", "gelu_tanh", "hardswish", "leaky_relu")
#: The negative slope of "leaky_relu": nn.LeakyReLU's default, what timm's SE modules use.
LEAKY_RELU_SLOPE = 0.01
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
