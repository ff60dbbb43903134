"""Built-in tasks: modular arithmetic on pairs (a, b) mod p, and sparse parity on {-1,+1}^n.

torch is imported where tensors are made, so registering the tasks (``gnorm plugins``) does not import it.
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Callable

import attrs

import gnorm
from gnorm.components import InputSpec, Split
from gnorm.errors import UserError

if TYPE_CHECKING:
    import torch


def _check_fraction(instance, attribute, value) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"'{attribute.name}' must be between 0 and 1 (exclusive), found {value}")


#: The largest modulus: a modular task holds all p^2 pairs (2^26 of them at p = 2^13) as int64 tensors.
MAX_MODULUS = 2**13


def _check_modulus(instance, attribute, value) -> None:
    if value < 2:
        raise ValueError(f"'{attribute.name}' must be at least 2, found {value}")
    if value > MAX_MODULUS:
        raise ValueError(f"'{attribute.name}' must be at most {MAX_MODULUS} (the task holds all p^2 pairs in "
                         f"memory), found {value}")


def train_size(num_examples: int, train_fraction: float) -> int:
    """n_train = round(train_fraction * num_examples)."""
    return int(round(train_fraction * num_examples))


def _leaves_both_sets(count_pairs: Callable[[int], int]):
    """Validator of ``train_fraction``: 0 < n_train < the number of pairs at the config's p, so that
    neither the training nor the test set is empty (checked only where p itself is valid)."""
    def check(instance, attribute, value) -> None:
        if not 2 <= instance.p <= MAX_MODULUS or not 0.0 < value < 1.0:
            return
        pairs = count_pairs(instance.p)
        n_train = train_size(pairs, value)
        if not 0 < n_train < pairs:
            empty = "training" if n_train == 0 else "test"
            raise ValueError(f"'{attribute.name}' {value} of the {pairs} pairs at p = {instance.p} gives "
                             f"{n_train} training and {pairs - n_train} test pairs: the {empty} set is empty")
    return check


@attrs.frozen
class ModularConfig:
    """``p``: the modulus; ``train_fraction``: share of the p^2 pairs used for training."""

    p: int = attrs.field(default=97, validator=_check_modulus)
    train_fraction: float = attrs.field(default=0.4, validator=[_check_fraction,
                                                                _leaves_both_sets(lambda p: p * p)])


#: Miller-Rabin witnesses that decide primality exactly for every n < 3.3 * 10^24 (beyond 2^64).
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    """Miller-Rabin with the first 13 primes as witnesses: n - 1 = d 2^s with d odd; n is composite when
    some witness a has a^d != 1 and a^(d 2^r) != -1 (mod n) for every r < s. Exact for n < 3.3 * 10^24."""
    if n < 2:
        return False
    for small in _WITNESSES:
        if n % small == 0:
            return n == small
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _check_prime(instance, attribute, value) -> None:
    if not is_prime(value):
        raise ValueError(f"'{attribute.name}' must be prime (division needs every b != 0 to have an inverse), "
                         f"found {value}")


@attrs.frozen
class PrimeModularConfig:
    """``p``: a prime modulus; ``train_fraction``: share of the pairs used for training."""

    p: int = attrs.field(default=97, validator=[_check_modulus, _check_prime])
    train_fraction: float = attrs.field(default=0.4, validator=[_check_fraction,
                                                                _leaves_both_sets(lambda p: p * (p - 1))])


def random_split(num_examples: int, train_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random permutation of the examples: the first n_train are the training set."""
    import torch

    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(num_examples, generator=generator)
    n_train = train_size(num_examples, train_fraction)
    return order[:n_train].sort().values, order[n_train:].sort().values


class ModularTask:
    """All pairs (a, b) in [0, p)^2 (with b != 0 when ``nonzero_b``) with label op(a, b) mod p; inputs
    are the two token ids."""

    def __init__(self, config: ModularConfig | PrimeModularConfig,
                 operation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], nonzero_b: bool = False):
        self.config = config
        self.num_classes = config.p
        self.input_spec = InputSpec(kind="tokens", length=2, vocab_size=config.p)
        self._operation, self._nonzero_b = operation, nonzero_b

    @functools.cached_property
    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels), built when first used: building the task to read its input shape (as the
        experiment loader does) costs nothing."""
        import torch

        p = self.config.p
        a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
        if self._nonzero_b:
            a, b = a[b != 0], b[b != 0]
        return torch.stack([a, b], dim=1), self._operation(a, b) % p

    @property
    def inputs(self) -> torch.Tensor:
        return self._pairs[0]

    @property
    def labels(self) -> torch.Tensor:
        return self._pairs[1]

    def split(self, split_seed: int) -> Split:
        n_train = train_size(len(self.labels), self.config.train_fraction)
        if not 0 < n_train < len(self.labels):
            raise UserError(f"task: train_fraction {self.config.train_fraction} of the {len(self.labels)} pairs at "
                            f"p = {self.config.p} leaves an empty training or test set")
        train_index, test_index = random_split(len(self.labels), self.config.train_fraction, split_seed)
        return Split(self.inputs, self.labels, train_index, test_index)


def modular_inverses(p: int) -> torch.Tensor:
    """inverse[b] = b^(p-2) mod p for b in [0, p) (Fermat: b * b^(p-2) = 1 mod p for prime p and b != 0;
    inverse[0] = 0 is never used)."""
    import torch

    return torch.tensor([pow(b, p - 2, p) for b in range(p)])


def modular_quotient(a: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    """a / b mod p = a * b^(p-2) mod p, for b != 0 and prime p."""
    return a * modular_inverses(p)[b] % p


def modular_sum_of_squares(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^2 + b^2 (reduced mod p by the task)."""
    return a * a + b * b


def _positive(instance, attribute, value) -> None:
    if value < 1:
        raise ValueError(f"'{attribute.name}' must be at least 1, found {value}")


@attrs.frozen
class SparseParityConfig:
    """``n_bits`` input bits, label the parity of the first ``k``; ``train_size`` training samples and a
    fresh test set of ``test_size``, both drawn from the split seed."""

    n_bits: int = attrs.field(default=30, validator=_positive)
    k: int = attrs.field(default=3, validator=_positive)
    train_size: int = attrs.field(default=1000, validator=_positive)
    test_size: int = attrs.field(default=2000, validator=_positive)

    @k.validator
    def _at_most_n_bits(self, attribute, value) -> None:
        if value > self.n_bits:
            raise ValueError(f"'k' must be at most n_bits ({self.n_bits}), found {value}")

    @test_size.validator
    def _fits_in_memory(self, attribute, value) -> None:
        inputs = (self.train_size + value) * self.n_bits
        if inputs > MAX_PARITY_INPUTS:
            raise ValueError(f"(train_size + test_size) * n_bits must be at most {MAX_PARITY_INPUTS} input "
                             f"values (held in memory), found {inputs}")


#: The most input values (samples x bits) a sparse parity task may hold.
MAX_PARITY_INPUTS = 2**28


def parity_labels(x: torch.Tensor, k: int) -> torch.Tensor:
    """Label of x in {-1,+1}^n: the parity of the bits b_i = (1 - x_i) / 2 of the first k coordinates,
    sum_{i<k} b_i mod 2; 1 exactly where prod_{i<k} x_i = -1."""
    return (x[..., :k] < 0).sum(-1) % 2


class SparseParityTask:
    """x uniform on {-1,+1}^n_bits (float vector inputs), label parity_labels(x, k), two classes. Each
    seed draws its own training and test samples, so the inputs differ between seeds; the two sets are
    independent draws (a test point may repeat a training point, with probability about
    train_size * test_size / 2^n_bits)."""

    def __init__(self, config: SparseParityConfig):
        self.config = config
        self.num_classes = 2
        self.input_spec = InputSpec(kind="vector", length=config.n_bits)

    def split(self, split_seed: int) -> Split:
        import torch

        c = self.config
        generator = torch.Generator().manual_seed(split_seed)
        total = c.train_size + c.test_size
        inputs = torch.randint(0, 2, (total, c.n_bits), generator=generator).float() * 2 - 1
        index = torch.arange(total)
        return Split(inputs, parity_labels(inputs, c.k), index[:c.train_size], index[c.train_size:])


@gnorm.hookimpl
def gnorm_tasks() -> list[gnorm.Task]:
    return [
        gnorm.Task(name="modular_addition", summary="(a + b) mod p on all p^2 pairs",
                   config_class=ModularConfig, factory=lambda config: ModularTask(config, operator.add)),
        gnorm.Task(name="modular_multiplication", summary="(a * b) mod p on all p^2 pairs",
                   config_class=ModularConfig, factory=lambda config: ModularTask(config, operator.mul)),
        gnorm.Task(name="modular_subtraction", summary="(a - b) mod p on all p^2 pairs",
                   config_class=ModularConfig, factory=lambda config: ModularTask(config, operator.sub)),
        gnorm.Task(name="modular_division", config_class=PrimeModularConfig,
                   summary="a / b = a * b^(p-2) mod p on the p(p-1) pairs with b != 0, p prime",
                   factory=lambda config: ModularTask(config, lambda a, b: modular_quotient(a, b, config.p),
                                                      nonzero_b=True)),
        gnorm.Task(name="modular_sum_of_squares", summary="(a^2 + b^2) mod p on all p^2 pairs",
                   config_class=ModularConfig, factory=lambda config: ModularTask(config, modular_sum_of_squares)),
        gnorm.Task(name="sparse_parity", summary="parity of the first k of n_bits +-1 inputs; fresh test set per seed",
                   config_class=SparseParityConfig, factory=SparseParityTask),
    ]
