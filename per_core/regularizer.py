r"""Algorithm 1 of [1]_ attached to layers: :class:`PER` adds :math:`\lambda \nabla L_{per}` in backward.

The math (the closed-form loss, the gradient, the slices) is in :mod:`per_core.per`; this module
holds the hooks that apply it to a model's layers during training, without changing the model.

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via
   distribution matching with the Wasserstein metric", ICLR 2020, arXiv:2002.05366.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from per_core.checks import (
    check_nonnegative,
    check_optional_positive_int,
    check_positive_int,
    check_seed,
    device_available,
)
from per_core.inplace import in_backward, owns, sole_owner_counts
from per_core.per import DEFAULT_CHUNK_ELEMENTS, compute_dtype, grad_and_loss, sample_slices
from per_core.samples import (
    Layout,
    as_samples,
    check_layout,
    choose_layout,
    from_samples,
    resolve_layout,
    with_batch_axis,
)

__all__ = ["PER", "named_targets"]


def named_targets(
    modules: nn.Module | Iterable[nn.Module] | Mapping[str, nn.Module], owner: str
) -> dict[str, nn.Module]:
    """Normalize what a hook-based regularizer attaches to into ``{label: module}``.

    A single module is labelled by its class name, a sequence (a ``ModuleList`` too) by ``"i:ClassName"``;
    a mapping (a ``ModuleDict`` too) keeps its labels: a container is never called itself, so its modules
    are the targets. A container inside a sequence or mapping is refused. ``owner`` names the regularizer
    in error messages.
    """
    if isinstance(modules, nn.ModuleDict):  # a container is never called: its modules are the targets
        named = dict(modules.items())
    elif isinstance(modules, nn.Module) and not isinstance(modules, nn.ModuleList):
        named = {type(modules).__name__: modules}
    elif isinstance(modules, Mapping):
        named = dict(modules)
    else:
        named = {f"{i}:{type(m).__name__}": m for i, m in enumerate(modules)}
    if not named:
        raise ValueError(f"{owner} needs at least one module to attach to")
    for name, m in named.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"{owner} can attach only to nn.Module objects; {name!r} is a {type(m).__name__}")
        if isinstance(m, nn.ModuleList | nn.ModuleDict):  # never called itself: its hooks would never run
            raise TypeError(
                f"{owner}: {name!r} is a {type(m).__name__}, which has no forward of its own (its hooks would "
                "never run); pass that container alone (its modules are then attached), or its modules"
            )
    return named


#: PER's default ``chunk_elements`` off the CPU (16 MiB of float32): on an H200, the sampled layers of a ResNet-56
#: stage then share one block, 42 fewer kernels per step (bench/RESULTS.md, "GPU, runs G3-G8").
DEVICE_CHUNK_ELEMENTS = 1 << 22


def _within_strata(device: torch.device) -> bool:
    """Whether the sampled path gathers equal strata from the (N, C, m, L/m) view by the position within each
    stratum (no stratum start added: one kernel fewer per layer, which counts on a GPU, ``bench/RESULTS.md``
    "GPU, runs G3-G8") rather than from (N, C, L) by absolute position (on the CPU, where torch's gather
    and scatter over the size-1 last axis took 1.1-2x as long). The same draws and values either way."""
    return device.type != "cpu"


#: What torch says when a CUDA graph captures a draw from a generator that is not registered with it.
_UNREGISTERED_GENERATOR = "not in capture mode"


@contextlib.contextmanager
def _graph_safe_draw() -> Iterator[None]:
    """Turn torch's error for a draw captured from an unregistered generator into one that says what to do."""
    try:
        yield
    except RuntimeError as exc:
        if _UNREGISTERED_GENERATOR not in str(exc):
            raise
        raise RuntimeError(
            "PER: a CUDA graph is capturing PER's random draws, but PER's generators are not registered with "
            "that graph; call per.register_with_graph(graph) before torch.cuda.graph(graph)"
        ) from exc


def _unused_output(name: str) -> None:
    """What a gradient hook does with the None gradient autograd hands an output the loss does not use.

    A fused kernel's node (an LSTM's, whose ``h_n`` the loss uses) runs with None for its unused output;
    autograd cannot take a gradient in its place, so PER adds nothing there and says so.
    """
    warnings.warn(
        f"PER: the loss does not use the output of layer {name!r} (e.g. an RNN's sequence when only its last "
        "hidden state is used), so PER added nothing there; add 0 * output.sum() to the loss to regularize it, "
        "or attach PER to a layer whose output the loss uses",
        RuntimeWarning,
        stacklevel=6,  # the backward() call: this, the hook, _engine_run_backward, autograd.backward, Tensor.backward
    )


class _Sampled:
    """One forward of a layer with ``locations=m``: its chosen rows, waiting for the (batched) backward."""

    __slots__ = ("__weakref__", "grad", "index", "loss", "name", "rows")

    def __init__(self, name: str, rows: Tensor, index: Tensor) -> None:
        self.name = name
        self.rows = rows  # (N, C, m): the chosen locations' channel vectors, as gathered
        # the chosen positions per image, expanded over channels: (N, C, m) in (N, C, L), or, with equal strata,
        # off the CPU (_within_strata) (N, C, m, 1) in the (N, C, m, L/m) view, each the position within its stratum
        self.index = index
        self.grad: Tensor | None = None  # scale x dL_per/d rows, (N, C, m) in the compute dtype, once computed
        self.loss: Tensor | None = None  # L_per of the rows, when tracked


class PER:
    r"""Attach PER (Algorithm 1 of [1]_) to layers: in backward, add :math:`\lambda \nabla L_{per}`.

    For each attached module, a forward hook keeps a detached reference to the module's output
    (no copy) and draws fresh slices; a hook on that output's gradient then adds

    .. math::
        \lambda\, \frac{1}{N s} \sum_j \mathrm{erf}(\langle \theta_j, h_i \rangle / \sqrt{2})\, \theta_j

    to every row :math:`h_i` (rows as in :func:`as_samples`). The loss itself is never computed in
    forward, nothing is added to the model (no parameters, no buffers), and the result is exactly
    the gradient of ``task_loss + lam * sum_layers per_loss(layer)`` with the same slices. The
    addition goes into the incoming gradient itself when nothing else holds it (the test autograd
    applies before summing in place), into a copy otherwise: a gradient shared with another tensor,
    kept by an earlier hook or passed to ``backward`` by the caller is never changed (memory shared
    outside PyTorch's reference counts, such as a numpy array that a custom backward keeps and
    returns as a gradient, is beyond what this test can see).

    Which tensor is regularized is the choice of modules: pass the Linear/Conv/LSTM modules to
    regularize their outputs, which are the *pre-activations* of the next nonlinearity (the default
    of the models in :mod:`per_core.models`, the place where BN normalizes and where a Gaussian
    target is attainable), or pass the activation modules (e.g. ``nn.ELU``) to regularize
    post-activations. For ``nn.LSTM``/``nn.GRU``/``nn.RNN`` the hidden-state sequence (the first
    output) is regularized, each time step a sample. An empty output (a batch of N = 0) has no rows
    and is skipped: nothing is added, no penalty is tracked. An unbatched call (a conv on (C, *S), a
    Linear on (d,)) is a batch of one. Gradient checkpointing: with ``use_reentrant=True`` PER attaches
    during the recomputation (the first forward runs without grad), which runs inside backward, so the
    checkpointed layers draw their slices after the layers above them; with ``use_reentrant=False``
    the recomputation draws slices (and locations) again that are never used. Either way every
    layer's gradient is as valid, and :meth:`penalty` covers every layer, but the random stream,
    hence the run, differs from an unchecked one.

    What the hooks cannot see: (1) an output the loss does not use gets no gradient, so PER adds
    nothing there (an RNN classified from its last hidden state alone): add ``0 * output.sum()`` to
    the loss. PER warns only where autograd shows it: a fused kernel whose node the loss reaches hands
    the unused output a None gradient (on the CPU: a one-directional, time-major LSTM in float32).
    Elsewhere (a GRU, float64, ``batch_first``, bidirectional or packed outputs) the unused output's
    node simply does not run, and nothing tells it apart from an output of no consequence;
    (2) PER's term enters the first-order gradient only: under ``create_graph=True`` (a gradient
    penalty, MAML) its second derivative is missing; (3) with loss scaling (``torch.amp.GradScaler``,
    float16 training) every incoming gradient is multiplied by the scale S, and PER's term must be too,
    or ``unscale_`` divides it by S: pass ``grad_scaler=scaler`` (a float16 output without one gets a
    warning); (4) ``torch.compile`` captures the hooks present
    at its first call: attach PER before compiling (or call ``torch._dynamo.reset()`` after attaching),
    and the compiled model then gives the same gradients as eager mode. Copies: ``copy.deepcopy`` of
    a PER, or of a model that holds it as an attribute, is a new PER on the copied layers with the
    same settings and streams; a deep copy of a model that does not hold it (an EMA model) carries
    the hooks along, and they leave the copy's layers alone (with a warning): attach a new PER to it.

    Parameters
    ----------
    modules : nn.Module, iterable of nn.Module, or mapping name -> nn.Module
        The layers whose outputs are regularized.
    lam : float
        Regularization strength :math:`\lambda \ge 0` (one value for all layers, as in the paper).
    n_slices : int
        Slices s drawn for every forward pass (paper: 256).
    seed : int
        Seed of PER's own generators (one per device), in [0, 2**64). Use the same seed on every
        data-parallel rank so that all ranks use the same slices.
    locations : int, optional
        For channels-first (conv) outputs, use m = ``locations`` random spatial locations per image
        instead of all L: an unbiased estimate of the same gradient (each location is chosen with
        probability exactly m / L; the m are distinct and spread over the image). Only the chosen
        rows are kept between forward and backward (N m C numbers instead of a reference to the
        whole output); their gradients are computed together at the first backward hook, layers
        of equal shape in one batched matmul-erf-matmul (fewer small ops; the same values as layer
        by layer). None (default) uses all locations, Algorithm 1 exactly. 4 is recommended
        for training conv nets: it keeps ~90 % of the gradient quality of all locations at a small
        fraction of the cost (numbers in :func:`as_samples`). With data parallelism give each rank
        its own ``locations_seed``, so that the ranks draw independent locations: unbiased, but not
        bit-identical to one process.
    locations_seed : int, optional
        Seed of the location draws, in [0, 2**64), from generators of their own (the trainer always
        gives one: :func:`per_core.seeds.stream_seed`). None (default): locations come from the
        slice generators (``seed``). With the same ``seed`` on every rank and no ``locations_seed``,
        image i of every rank would get the same positions (still unbiased, but correlated across
        ranks).
    track_penalty : bool
        When True, each backward also stores :math:`L_{per}` per layer (cheap: it reuses the
        projections and erf); read it with :meth:`penalty`. Can be switched at any time.
    layout : {None, 'auto', 'features_last', 'channels_first'} or mapping label -> one of those
        How outputs become rows (:func:`per_core.as_samples`). Each module's type decides where it
        can (:func:`per_core.samples.layout_of`: convolutions and BatchNorm channels first; Linear, RNN
        and LayerNorm over the last axis features last, at any rank). A single value decides for the
        modules whose type says nothing (activations, ``Identity``, a LayerNorm subclass), e.g.
        ``'channels_first'`` for an activation after a Conv1d; a mapping decides for the layers it
        names, whatever their type (ConvNeXt's channels-first ``LayerNorm2d``). None (default): from
        each type, ``'auto'`` where it says nothing.
    grad_scaler : torch.amp.GradScaler, optional
        The scaler whose ``scale(loss)`` is backpropagated: PER's term is then multiplied by its
        current scale (read as a tensor, no synchronization), as the task loss's gradient is, so that
        ``unscale_`` and ``step`` see ``lambda * grad L_per`` as without scaling.
    chunk_elements : int, optional
        Memory bound of one (rows x slices) projection block, reused by every chunk. None (default):
        2^20 elements on the CPU, 4 MiB in float32 (on a 2-core CPU it ran 131,072 x 256 about 1.8x
        faster than 2^22, which leaves cache, and as fast as 2^18 with 4x fewer ops, which matters on
        a busy machine where every multi-threaded op can wait for a core); 2^22 off the CPU, 16 MiB,
        where each block is a few kernel launches whatever its size (fewer blocks: fewer launches).

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ELU(), nn.Linear(8, 2))
    >>> with PER(net[0], lam=1e-3, track_penalty=True) as per:
    ...     net(torch.randn(16, 4)).pow(2).mean().backward()
    ...     per.penalty() > 0.79  # L_per is never below sqrt(2/pi)
    True
    """

    def __init__(
        self,
        modules: nn.Module | Iterable[nn.Module] | Mapping[str, nn.Module],
        lam: float,
        n_slices: int = 256,
        *,
        seed: int = 0,
        locations: int | None = None,
        locations_seed: int | None = None,
        track_penalty: bool = False,
        chunk_elements: int | None = None,
        layout: Layout | Mapping[str, Layout] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        locations = check_optional_positive_int(locations, "locations", "all")
        named = named_targets(modules, "PER")
        self.layout = check_layout(layout, named)
        self.lam = check_nonnegative(lam, "lam")  # numpy scalars (a notebook's grid) are stored as float/int
        self.n_slices = check_positive_int(n_slices, "n_slices")
        self.seed = check_seed(seed)
        self.locations = locations
        self.track_penalty = track_penalty
        self.chunk_elements = check_optional_positive_int(chunk_elements, "chunk_elements", "the device's default")
        self.modules = named
        self.locations_seed = None if locations_seed is None else check_seed(locations_seed)
        if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
            raise TypeError(f"grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")
        self.grad_scaler = grad_scaler
        self._warned_half = self._warned_copy = False
        self._generators: dict[torch.device, torch.Generator] = {}
        self._location_generators: dict[torch.device, torch.Generator] = {}
        self._penalties: dict[str, Tensor] = {}
        self._new_pass = True  # a forward ran since the penalties were last tracked
        self._strata_cache: dict[tuple[int, int, torch.device], tuple[Tensor, Tensor]] = {}
        self._pending: list[weakref.ref[_Sampled]] = []  # sampled-location forwards awaiting their backward
        self._prune_at = 64  # forwards never followed by a backward leave dead references: pruned past this length
        # backward hooks of one PER can run in several threads at once (nn.DataParallel's replicas)
        self._lock = threading.RLock()
        self._handles = [m.register_forward_hook(self._make_forward_hook(n, m)) for n, m in named.items()]

    # -- randomness -----------------------------------------------------------------------------
    def _generator(self, device: torch.device, locations: bool = False) -> torch.Generator:
        """The generator of the slices on ``device`` (or of the locations, when they have a seed of their own)."""
        own = locations and self.locations_seed is not None
        gens, seed = (self._location_generators, self.locations_seed) if own else (self._generators, self.seed)
        if device not in gens:
            gens[device] = torch.Generator(device=device).manual_seed(seed)
        return gens[device]

    def register_with_graph(self, graph: torch.cuda.CUDAGraph, device: torch.device | str | None = None) -> None:
        """Let a CUDA graph that captures this PER's passes draw fresh slices and locations on every replay.

        A captured random op replays with the generator offsets that the graph advances; PyTorch does
        that for the default CUDA generator by itself, and for other generators only when they are
        registered with the graph (``CUDAGraph.register_generator_state``). PER draws from its own
        generators (``seed``, and ``locations_seed`` when given), so a training step captured in a
        graph needs this call before ``torch.cuda.graph(graph)``. The generators of ``device``
        (a CUDA device, default the current one; any other is a ValueError) are made here if no
        forward pass has made them yet.
        Without it the capture stops at PER's first draw with an error that names this method (torch's
        own: "Attempt to increase offset for a CUDA generator not in capture mode"). A graph captured
        with ``track_penalty=True`` leaves in :meth:`penalty` the values of the last replay.
        ``bench/step_graph.py`` captures whole training steps this way.

        Example (CUDA)::

            per = PER(model.pre_activations(), lam=1e-4, locations=4)
            ...                              # a few eager steps on a side stream (warm-up)
            graph = torch.cuda.CUDAGraph()
            per.register_with_graph(graph)
            with torch.cuda.graph(graph):
                step()                       # forward, loss, backward, optimizer step
            graph.replay()                   # new slices and locations every replay
        """
        dev = torch.device("cuda") if device is None else torch.device(device)
        if dev.type != "cuda":
            raise ValueError(f"register_with_graph: CUDA graphs run on CUDA devices, got device {str(dev)!r}")
        if dev.index is None:  # the hooks key the generators on the tensors' devices: cuda:i
            dev = torch.device("cuda", torch.cuda.current_device())
        self._register_generators(graph, dev)

    def _register_generators(self, graph: torch.cuda.CUDAGraph, device: torch.device) -> None:
        """Register the generators that the hooks draw from on ``device`` with ``graph``, made if missing."""
        graph.register_generator_state(self._generator(device))
        if self.locations_seed is not None:  # otherwise the locations come from the same generator
            graph.register_generator_state(self._generator(device, locations=True))

    def __deepcopy__(self, memo: dict[int, object]) -> PER:
        """A new PER with these settings and generator states, attached to the copies of the modules.

        With a model that holds its PER (``self.per = PER(...)``), ``copy.deepcopy(model)`` (an EMA or SWA
        model) gets a PER of its own on its own layers; this PER's hooks, which the copied modules carry
        along, are taken off them.
        """
        modules = copy.deepcopy(self.modules, memo)  # the model's copies, when the model is being copied
        for module in modules.values():
            for handle in self._handles:
                module._forward_hooks.pop(handle.id, None)
        twin = PER(
            modules,
            self.lam,
            self.n_slices,
            seed=self.seed,
            locations=self.locations,
            locations_seed=self.locations_seed,
            track_penalty=self.track_penalty,
            chunk_elements=self.chunk_elements,
            layout=self.layout,
            grad_scaler=memo.get(id(self.grad_scaler), self.grad_scaler),  # the copy's scaler if it was copied too
        )
        twin.load_state_dict(self.state_dict())
        return twin

    def state_dict(self) -> dict[str, object]:
        """Generator states (for exact resume) and settings."""
        return {
            "lam": self.lam,
            "n_slices": self.n_slices,
            "seed": self.seed,
            "generators": {str(d): g.get_state() for d, g in self._generators.items()},
            "location_generators": {str(d): g.get_state() for d, g in self._location_generators.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore generator states saved by :meth:`state_dict`.

        States of devices this process does not have are left out: a run moved from a GPU to a
        CPU-only machine draws its slices afresh from ``seed`` on the new device.
        """
        for key, locations in (("generators", False), ("location_generators", True)):
            if locations and self.locations_seed is None:
                continue  # the locations come from the slice generators
            gens = state.get(key, {})  # location generators: absent from states saved before they existed
            assert isinstance(gens, Mapping)
            for dev, st in gens.items():
                if device_available(dev):
                    self._generator(torch.device(dev), locations).set_state(st)

    # -- hooks ----------------------------------------------------------------------------------
    def _chunk(self, device: torch.device) -> int:
        """``chunk_elements``, or its default on ``device``: 2^20 on the CPU, 2^22 on accelerators."""
        if self.chunk_elements is not None:
            return self.chunk_elements
        return DEFAULT_CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS

    def _scale(self, device: torch.device) -> float | Tensor:
        """What the gradient of L_per at a layer on ``device`` is multiplied by: lambda, times the loss scale
        of ``grad_scaler`` (moved to ``device``: under nn.DataParallel the scale lives on the first GPU
        only); 1 when only the penalty is tracked."""
        if self.lam == 0.0:
            return 1.0
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled():
            return self.lam
        current = scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else None
        if current is None:
            return self.lam * scaler.get_scale()
        # in float64 where the device has it: lambda S / (N s) is folded into the slices in their dtype
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return self.lam * current.to(device=device, dtype=dtype, non_blocking=device.type != "cpu")

    def _make_forward_hook(self, name: str, module: nn.Module):
        def forward_hook(mod: nn.Module, args: tuple, out: object) -> None:
            # a copy of the module (copy.deepcopy of the model) carries this hook along; nn.DataParallel's
            # replicas of it are the same layer, run on other devices
            if mod is not module and not getattr(mod, "_is_replica", False):
                self._copied_module(name)
                return
            h = out[0] if isinstance(out, tuple) else out
            if isinstance(h, PackedSequence):
                h = h.data  # (sum of lengths, H): already rows
            if not isinstance(h, Tensor) or not h.requires_grad or not h.is_floating_point():
                return
            if not in_backward():  # a forward outside backward (not a checkpoint's recomputation)
                self._new_pass = True  # the next tracked penalty starts a new record
            if self.lam == 0.0 and not self.track_penalty:
                return
            if h.numel() == 0:  # an empty batch (or empty feature maps): no rows, nothing to regularize
                return
            v = with_batch_axis(mod, h.detach())  # what PER reads: the output, a batch axis added if it had none
            lay = resolve_layout(tuple(v.shape), choose_layout(mod, v.ndim, name, self.layout))
            d = v.shape[1] if lay == "channels_first" else v.shape[-1]
            if h.dtype == torch.float16 and self.grad_scaler is None and self.lam != 0.0 and not self._warned_half:
                self._warned_half = True
                warnings.warn(
                    "PER: a float16 output and no grad_scaler: if the loss is scaled (torch.amp.GradScaler), pass "
                    "PER(..., grad_scaler=scaler), or unscale_ divides PER's term by the loss scale",
                    RuntimeWarning,
                    stacklevel=2,
                )
            dtype = compute_dtype(h.dtype)
            gen = self._generator(h.device)
            sole_owner_counts(str(h.device))  # settled in a forward pass, not inside the first backward
            if lay == "channels_first":
                flat = v.flatten(2)  # (N, C, *S) -> (N, C, L): a view for contiguous and channels-last
                within = _within_strata(h.device)
                with _graph_safe_draw():
                    index = self._pick_locations(flat, self._generator(h.device, locations=True), not within)
                if index is not None:  # keep only the chosen locations: (N, C, m), a small copy
                    n, c, n_loc = flat.shape
                    m = index.shape[1]
                    if within and n_loc % m == 0:  # (N, C, m, L/m): the index is the position within its stratum
                        flat, index = flat.view(n, c, m, n_loc // m), index.view(n, 1, m, 1).expand(-1, c, -1, -1)
                    else:
                        index = index.unsqueeze(1).expand(-1, c, -1)
                    entry = _Sampled(name, flat.gather(-1, index).view(n, c, m), index)
                    self._remember(entry)
                    h.register_hook(self._make_sampled_grad_hook(entry))
                    return
            with _graph_safe_draw():
                theta = sample_slices(self.n_slices, d, generator=gen, device=h.device, dtype=dtype)
            h.register_hook(self._make_grad_hook(name, v, h._version, theta, lay))

        return forward_hook

    def _copied_module(self, name: str) -> None:
        """Say once that a copy of a regularized module ran: PER leaves it alone."""
        if not self._warned_copy:
            self._warned_copy = True
            warnings.warn(
                f"PER: a copy of layer {name!r} ran forward (e.g. a copy.deepcopy of the model, an EMA model); PER "
                "regularizes only the modules it was attached to: attach a new PER to the copy's modules",
                RuntimeWarning,
                stacklevel=3,
            )

    def _remember(self, entry: _Sampled) -> None:
        """Queue a sampled forward for the next backward; drop the queue's dead references now and then
        (forwards with grad but no backward, e.g. an evaluation outside ``no_grad``, would grow it forever)."""
        with self._lock:
            self._pending.append(weakref.ref(entry))
            if len(self._pending) >= self._prune_at:
                self._pending = [ref for ref in self._pending if ref() is not None]
                self._prune_at = 2 * len(self._pending) + 64

    def _pick_locations(self, flat: Tensor, generator: torch.Generator, absolute: bool = True) -> Tensor | None:
        """``locations`` = m distinct random spatial positions per image, shape (N, m), or None for all.

        Stratified, in O(N m) (sorting N x L random keys, the textbook way, costs more than PER
        itself): the L positions in raster order are cut into m consecutive strata and one position
        is drawn uniformly in each. When m divides L the strata have L/m positions each; otherwise
        they have floor(L/m) or ceil(L/m) positions and start at a random offset (positions seen as
        a circle), which makes every position equally likely. Either way each position is chosen
        with probability exactly m / L (the estimate is unbiased), the m positions are distinct, and
        they are spread over the image (less variance than independent draws). With equal strata and
        ``absolute=False``, column k holds the position within stratum k (the forward hook gathers
        from the (N, C, m, L/m) view: one kernel fewer per layer, see :func:`_within_strata`); the
        draws are the same.
        """
        n, n_loc = flat.shape[0], flat.shape[2]
        m = self.locations
        if m is None or m >= n_loc:
            return None
        if n_loc % m == 0:  # equal strata: each position is in one stratum of L/m, no rotation needed
            within = torch.randint(0, n_loc // m, (n, m), generator=generator, device=flat.device)
            return within.add_(self._strata(n_loc, m, flat.device)[0]) if absolute else within
        starts, sizes = self._strata(n_loc, m, flat.device)
        # uniform in [0, size) per stratum: a 62-bit integer mod size (bias below 2^-55)
        within = torch.randint(0, 1 << 62, (n, m), generator=generator, device=flat.device).remainder_(sizes)
        offset = torch.randint(0, n_loc, (n, 1), generator=generator, device=flat.device)
        return within.add_(starts).add_(offset).remainder_(n_loc)  # (N, m)

    def _strata(self, n_loc: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Start and size of the m strata of L positions (cached per shape and device)."""
        key = (n_loc, m, device)
        if key not in self._strata_cache:
            edges = torch.arange(m + 1, device=device) * n_loc // m  # stratum k = [edges[k], edges[k+1])
            self._strata_cache[key] = (edges[:-1].clone(), edges[1:] - edges[:-1])
        return self._strata_cache[key]

    def _make_grad_hook(self, name: str, saved: Tensor, version: int, theta: Tensor, layout: Layout):
        def grad_hook(grad: Tensor | None) -> Tensor | None:
            if grad is None:  # the loss does not use this output, only another output of its node (an LSTM's h_n)
                return _unused_output(name)
            if saved._version != version:
                raise RuntimeError(
                    f"PER: the output of layer {name!r} was modified in place after the forward pass; "
                    "use out-of-place operations (e.g. nn.ELU(inplace=False)) after regularized layers"
                )
            x = saved.to(theta.dtype)
            g, loss = grad_and_loss(
                as_samples(x, layout), theta, self.track_penalty, self._chunk(x.device), self._scale(x.device)
            )
            if loss is not None:
                self._track(name, loss)
            if self.lam == 0.0:
                return grad
            g = from_samples(g, x.shape, layout).to(grad.dtype).reshape(grad.shape)  # drops an added batch axis
            return grad.add_(g) if owns(grad) else grad + g

        return grad_hook

    def _make_sampled_grad_hook(self, entry: _Sampled):
        """Backward for ``locations=m``: lambda x the gradient of the N*m chosen rows, added at their locations."""

        def grad_hook(grad: Tensor | None) -> Tensor | None:
            if grad is None:  # as in _make_grad_hook
                return _unused_output(entry.name)
            with self._lock:
                if entry.grad is None:
                    self._compute_pending()
                if entry.loss is not None:  # tracked when its own gradient is used, as the other layers'
                    self._track(entry.name, entry.loss)
            assert entry.grad is not None
            if self.lam == 0.0:
                return grad
            # into grad itself when nothing else sees it; otherwise into a copy that owns its storage
            # (not a view: autograd sums the two gradients of a residual input in place only into such a tensor)
            out = grad if owns(grad) else grad.clone(memory_format=torch.contiguous_format)
            index = entry.index  # (N, C, m), or (N, C, m, 1) within equal strata off the CPU
            out.view(*index.shape[:-1], -1).scatter_add_(-1, index, entry.grad.to(grad.dtype).view(index.shape))
            return out

        return grad_hook

    def _compute_pending(self) -> None:
        """The PER gradients of every layer whose forward ran since the last call, layers of equal shape batched.

        The gradient at a layer's output depends only on its own rows and slices, never on the
        gradient flowing back, so all of them can be computed when the first one is needed: the
        layers with equal (N*m, C) (a ResNet stage) share one batched matmul-erf-matmul instead of
        ~10 small ops each, which on a small-layer net is most of PER's cost (``bench/``).
        Slices are drawn here, s fresh ones per layer, in forward order. Entries whose graph was
        dropped without a backward pass are gone (weak references) and cost nothing.
        """
        live = [e for ref in self._pending if (e := ref()) is not None and e.grad is None]
        self._pending.clear()
        self._prune_at = 64
        groups: dict[tuple[torch.Size, torch.dtype, torch.device], list[_Sampled]] = {}
        for e in live:
            groups.setdefault((e.rows.shape, e.rows.dtype, e.rows.device), []).append(e)
        s = self.n_slices
        for (shape, dtype, device), entries in groups.items():
            scale = self._scale(device)
            n_img, d, m = shape
            n = n_img * m
            dtype = compute_dtype(dtype)
            gen = self._generator(device)
            with _graph_safe_draw():
                theta = sample_slices(len(entries) * s, d, generator=gen, device=device, dtype=dtype).view(-1, s, d)
            chunk = self._chunk(device)
            per_block = max(1, chunk // (n * s))  # layers per batched block
            for i in range(0, len(entries), per_block):
                part = entries[i : i + per_block]
                # rows (G, N, C, m) -> (G, N*m, C): one copy for the block, in the compute dtype
                x = torch.stack([e.rows for e in part]).to(dtype).transpose(-1, -2).reshape(len(part), n, d)
                g, loss = grad_and_loss(x, theta[i : i + len(part)], self.track_penalty, chunk, scale)
                for k, e in enumerate(part):
                    e.grad = g[k].view(n_img, m, d).transpose(1, 2)  # (N*m, C) -> (N, C, m)
                    e.loss = None if loss is None else loss[k]

    def _track(self, name: str, loss: Tensor) -> None:
        """Add one call's L_per to its layer's penalty of this backward pass (the first after a forward starts over).

        Keyed on forwards rather than on autograd's graph task: a reentrant checkpoint runs its recomputation
        and backward as a nested task, inside the same backward pass.
        """
        with self._lock:
            if self._new_pass:
                self._penalties, self._new_pass = {}, False
            loss = loss.detach()
            self._penalties[name] = self._penalties[name] + loss if name in self._penalties else loss

    # -- logging and removal --------------------------------------------------------------------
    def penalty(self, per_layer: bool = False) -> float | dict[str, float]:
        r"""Last tracked :math:`\sum_{layers} L_{per}` (without :math:`\lambda`), or per layer.

        Values come from the backward passes run with ``track_penalty=True`` since the last forward
        pass (only the layers they reached): with one backward per forward, the usual step, that
        pass's :math:`L_{per}`; a graph differentiated twice (``retain_graph=True``), or several
        forwards before their backward passes, add up. Reading them synchronizes with the device, so
        call it when logging, not every step. A module called more than once in one forward (weight
        sharing) gets a gradient for every call, and its penalty is the sum over those calls, the
        objective whose gradient was added: :math:`\sum_{calls} L_{per}(h_{call})`.
        """
        if not self._penalties:
            raise RuntimeError(
                "PER.penalty(): no penalty was tracked yet: "
                + (
                    "no regularized layer ran forward and backward since track_penalty was set"
                    if self.track_penalty
                    else "set track_penalty=True before a backward pass"
                )
            )
        values = {k: float(v) for k, v in self._penalties.items()}
        return values if per_layer else sum(values.values())

    def remove(self) -> None:
        """Detach from all modules; later passes are exactly vanilla."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> PER:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"PER(lam={self.lam:g}, n_slices={self.n_slices}, layers={list(self.modules)})"
