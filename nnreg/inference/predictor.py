"""The predictor: one network, one weight set per fold, pairs in, original-grid displacement fields out.

Conventions: the returned field is float32 ``(H, W, D, 3)`` on the **original fixed grid**, voxel units along
the array axes (nibabel order), pull: ``warped(x) = moving(x + u(x))`` — the Learn2Reg/LUMIR format. The
network runs on the configuration's grid (resampled, cropped/padded); :meth:`GridMapping.field_to_original`
undoes that and rescales the vectors. When the network grid is coarser than the original (e.g. ``3d_halfres`` of
1 mm images), the refinement ends with a few steps on the network box at the original spacing
(:mod:`nnreg.inference.finer_grid`), so the field carries the original grid's detail. Inference runs under ``torch.inference_mode``; CPU threads default to
the cores this process may use.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nnreg.dataset.image_io import Geometry, read_image
from nnreg.dataset.naming import challenge_id_and_modality
from nnreg.inference.ensemble import EnsembleReport, ensemble_displacements
from nnreg.inference.finer_grid import FinerGridSettings, finer_grid_applies, finer_mapping, refine_on_finer_grid
from nnreg.inference.instance_optimization import RefinementReport, exponential_field, refine_field
from nnreg.inference.model_folder import DEFAULT_CHECKPOINT, read_trained_model
from nnreg.inference.preparation import PreparedPair, prepare_arrays, with_training_reference
from nnreg.inference.refinement_settings import MULTIMODAL_REFINEMENT, InstanceOptimization
from nnreg.planning.plans import ConfigurationPlan
from nnreg.spatial import compose
from nnreg.utilities.cpus import usable_cpus
from nnreg.utilities.errors import ConfigurationError

logger = logging.getLogger(__name__)

# where the refinement starts: the network's field, or the identity (the network is not run; an ablation that shows
# what the network adds, benchmarks/accuracy.py's ``nnreg_identity`` row)
STARTS = ("network", "identity")


def usable_cores() -> int:
    """CPU cores this process may run on: affinity and cgroup v1/v2 quotas (``docker --cpus``), see
    :mod:`nnreg.utilities.cpus`."""
    return usable_cpus()


class nnRegPredictor:  # noqa: N801 - named like nnU-Net's nnUNetPredictor on purpose
    """Register pairs with a trained nnreg model (all folds ensembled).

    ``channels_last`` stores 3D activations channels-last (``torch.channels_last_3d``); whether that helps
    depends on the network and the CPU, so it is off by default (see benchmarks/inference_cpu.py).
    """

    def __init__(self, device: str | torch.device = "cpu", num_threads: int | None = None,
                 channels_last: bool = False,
                 instance_optimization: int | InstanceOptimization | None = None,
                 deterministic: bool = False,
                 instance_optimization_overrides: dict[str, Any] | None = None,
                 finer_grid: FinerGridSettings | None = None, start: str = "network") -> None:
        """``instance_optimization``: None = the setting recorded in the plans (off if none), an int = that many
        refinement steps with the recorded (or default) settings, or full :class:`InstanceOptimization` settings.
        ``instance_optimization_overrides`` replaces single keys of the recorded settings (before an int's steps).
        ``finer_grid``: the stage on the original grid after a refinement on a coarser network grid (default
        :class:`FinerGridSettings`; ``steps=0``: the field ends on the network grid). ``start``: ``"network"``, or
        ``"identity"`` (the zero field replaces the network's; it needs a refinement, :meth:`check_start`)."""
        if start not in STARTS:
            raise ConfigurationError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
        self.start = start
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigurationError("--device cuda requested but no CUDA device is available")
        if self.device.type == "cpu":
            torch.set_num_threads(num_threads or usable_cores())
        self.channels_last = channels_last
        self.network: torch.nn.Module | None = None
        self.configuration: ConfigurationPlan | None = None
        self.configuration_name: str | None = None
        self.fold_weights: list[dict[str, torch.Tensor]] = []
        self.folds: list[str] = []
        self.last_ensemble: EnsembleReport | None = None
        self._loaded_fold: int | None = None
        self._fold_networks: list[torch.nn.Module] | None = None
        # --inverse: also keep the folds' mean velocity inverse (network grid) of the last pair, see inference.inverse
        self.keep_velocity_inverse = False
        self.last_velocity_inverse: torch.Tensor | None = None
        self.instance_optimization_request = instance_optimization
        self.instance_optimization_overrides = dict(instance_optimization_overrides or {})
        InstanceOptimization().with_overrides(self.instance_optimization_overrides)   # bad keys fail here, early
        self.deterministic = deterministic
        self.last_refinement: RefinementReport | None = None
        self.finer_grid = finer_grid if finer_grid is not None else FinerGridSettings()
        self.last_finer_grid: RefinementReport | None = None

    # -- set-up ----------------------------------------------------------------------------------------
    def initialize_from_trained_model_folder(self, folder: str | Path,
                                             use_folds: Sequence[str | int] | None = None,
                                             checkpoint_name: str = DEFAULT_CHECKPOINT,
                                             configuration: str | None = None) -> "nnRegPredictor":
        """Load plans and the checkpoints of ``use_folds`` (None = every fold present) from a model folder."""
        from nnreg.networks import build_network

        model = read_trained_model(folder, use_folds, checkpoint_name, configuration)
        architectures = model.fold_architectures or [model.configuration.architecture] * len(model.folds)
        built: dict[str, torch.nn.Module] = {}   # each fold's own architecture (from its checkpoint), built once
        for architecture in architectures:
            key = json.dumps(architecture, sort_keys=True)
            if key not in built:
                built[key] = build_network(architecture)
        networks = [built[json.dumps(a, sort_keys=True)] for a in architectures]
        self.folds = model.folds
        self.manual_initialization(networks[0], with_training_reference(model.configuration, model.folder),
                                   model.fold_weights, configuration_name=model.configuration_name)
        if len(built) > 1:
            self._fold_networks = [self._placed(n) for n in networks]
        return self

    def manual_initialization(self, network: torch.nn.Module, configuration: ConfigurationPlan,
                              fold_weights: list[dict[str, torch.Tensor]] | None = None,
                              configuration_name: str | None = None) -> "nnRegPredictor":
        """Use an in-memory network (e.g. the trainer's, for its final validation); ``fold_weights`` None keeps
        the network's current weights as the only fold."""
        self.configuration = configuration
        self.configuration_name = configuration_name
        self.network = self._placed(network)
        self._fold_networks = None
        if fold_weights is None:
            fold_weights = [{k: v.detach().clone() for k, v in network.state_dict().items()}]
        self.fold_weights = list(fold_weights)
        if not self.folds or len(self.folds) != len(self.fold_weights):
            self.folds = [str(i) for i in range(len(self.fold_weights))]
        self._loaded_fold = None
        return self

    def _placed(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` on the device, in eval mode (channels-last if asked)."""
        network = network.to(self.device).eval()
        return network.to(memory_format=torch.channels_last_3d) if self.channels_last else network

    def _require_ready(self) -> tuple[torch.nn.Module, ConfigurationPlan]:
        if self.network is None or self.configuration is None:
            raise RuntimeError("call initialize_from_trained_model_folder() or manual_initialization() first")
        return self.network, self.configuration

    def _load_fold(self, index: int) -> None:
        if self._loaded_fold != index:
            if self._fold_networks is not None:   # folds trained with different architectures
                self.network = self._fold_networks[index]
            network, _ = self._require_ready()
            try:
                network.load_state_dict(self.fold_weights[index])
            except RuntimeError as exc:   # torch: a header line, then one line per missing/unexpected/wrong key
                lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
                detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
                detail = detail if len(detail) <= 200 else detail[:197] + "..."
                raise ConfigurationError(f"fold {self.folds[index]}'s weights do not fit the network the plans "
                                         f"describe: {detail}") from None
            self._loaded_fold = index

    # -- prediction --------------------------------------------------------------------------------------
    def _to_input(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(self.device)
        return tensor.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else tensor

    def predict_network_grid(self, fixed_network: np.ndarray, moving_network: np.ndarray,
                             refine: bool = True, settings: InstanceOptimization | None = None) -> torch.Tensor:
        """The ensembled ``(1, 3, *shape)`` field on the network grid for preprocessed inputs, refined by
        :meth:`refine` (with ``settings``, default those in effect) unless ``refine`` is False (benchmarks time the
        two parts separately)."""
        from nnreg.inference.inverse import velocity_inverse

        network, _ = self._require_ready()
        settings = self.instance_optimization if settings is None else settings
        # a refinement from the network's field replaces the network's inverse estimate by exp(-v): skip it
        network_inverse = self.keep_velocity_inverse and not (
            refine and settings.enabled and settings.velocity_start == "network")
        fields: list[torch.Tensor] = []
        inverses: list[torch.Tensor | None] = []
        with torch.inference_mode():
            if self.start == "identity":    # no network: the zero field (and its inverse) is the start
                fields.append(torch.zeros((1, 3, *fixed_network.shape), dtype=torch.float32))
                inverses += [torch.zeros_like(fields[0])] if network_inverse else []
            else:
                moving = self._to_input(moving_network)
                fixed = self._to_input(fixed_network)
                for index in range(len(self.fold_weights)):
                    self._load_fold(index)
                    network = self.network   # the fold's own network when the folds' architectures differ
                    output = network(moving, fixed)
                    fields.append(output.displacement.float().contiguous().cpu())
                    if network_inverse:
                        inverses.append(velocity_inverse(network, output))
                    del output
                del moving, fixed
            field, self.last_ensemble = ensemble_displacements(fields)
            self.last_velocity_inverse = None if not inverses or any(w is None for w in inverses) else \
                torch.stack([w.cpu() for w in inverses]).mean(0)
        return self.refine(fixed_network, moving_network, field, settings) if refine else field

    @property
    def instance_optimization(self) -> InstanceOptimization:
        """The refinement settings in effect: the request, else the plans' ``instance_optimization`` (else off)."""
        _, configuration = self._require_ready()
        request = self.instance_optimization_request
        if isinstance(request, InstanceOptimization):
            return request
        recorded = InstanceOptimization.from_json(getattr(configuration, "instance_optimization", None))
        recorded = recorded.with_overrides(self.instance_optimization_overrides)
        return recorded if request is None else recorded.with_steps(int(request))

    def check_start(self) -> None:
        """A start from the identity without a refinement would write zero fields: refuse it (one clear line)."""
        if self.start == "identity" and not self.instance_optimization.enabled:
            raise ConfigurationError("--start identity needs a refinement to start (the plans record none, or "
                                     "--instance-optimization 0 turned it off): the fields would all be zero")

    def settings_for_pair(self, fixed: str | Path, moving: str | Path) -> InstanceOptimization:
        """The refinement settings of one pair: those in effect, with :data:`MULTIMODAL_REFINEMENT` (MIND-SSC) when
        the two images' modalities differ (the LUMIR ``_000M`` suffix of their names) and no similarity was chosen
        (by a request, ``--instance-optimization-settings`` or the plans' entry)."""
        settings = self.instance_optimization
        _, configuration = self._require_ready()
        chosen = (isinstance(self.instance_optimization_request, InstanceOptimization)
                  or "similarity" in self.instance_optimization_overrides
                  or "similarity" in (getattr(configuration, "instance_optimization", None) or {}))
        if not settings.enabled or chosen:
            return settings
        if challenge_id_and_modality(fixed)[1] == challenge_id_and_modality(moving)[1]:
            return settings
        return settings.with_overrides(MULTIMODAL_REFINEMENT)

    def refine(self, fixed_network: np.ndarray, moving_network: np.ndarray, field: torch.Tensor,
               settings: InstanceOptimization | None = None) -> torch.Tensor:
        """Test-time instance optimisation of the (ensembled) network-grid field with ``settings`` (default: those
        in effect, :attr:`instance_optimization`; the field unchanged when off). Report in ``last_refinement``."""
        settings = self.instance_optimization if settings is None else settings
        self.last_refinement = None
        if not settings.enabled:
            return field
        fixed, moving = self._image(fixed_network), self._image(moving_network)
        refined, self.last_refinement = refine_field(fixed, moving, field.to(self.device), settings,
                                                     self.deterministic)
        velocity = self.last_refinement.velocity
        if self.keep_velocity_inverse and velocity is not None:
            # exp(v)^-1 = exp(-v); with a correction c = exp(v) of the network: (u_net o c)^-1 = c^-1 o u_net^-1
            with torch.no_grad():
                inverse = exponential_field(-velocity, tuple(field.shape[2:]), settings.integration_steps).cpu()
                if settings.velocity_start == "network":
                    self.last_velocity_inverse = inverse
                elif self.last_velocity_inverse is not None:
                    self.last_velocity_inverse = compose(inverse, self.last_velocity_inverse)
        return refined.cpu()

    def predict_prepared(self, pair: PreparedPair, settings: InstanceOptimization | None = None) -> np.ndarray:
        """The original-grid ``(H, W, D, 3)`` float32 field of a prepared pair (refined with ``settings``, default
        those in effect)."""
        field = self.predict_network_grid(pair.fixed_network, pair.moving_network, settings=settings)
        finer = self.refine_on_original_grid(pair, settings)
        return finer if finer is not None else pair.mapping.field_to_original(field[0].numpy())

    def refine_on_original_grid(self, pair: PreparedPair,
                                settings: InstanceOptimization | None = None) -> np.ndarray | None:
        """The finer-grid stage after :meth:`refine` (``settings``: the refinement's, default those in effect): the
        last refinement's velocity goes on with the similarity measured on the network box at about the original
        spacing (:func:`nnreg.inference.finer_grid.finer_mapping`). Returns the original-grid ``(H, W, D, 3)`` field,
        or None where the stage does not apply (off, no refined velocity, ``velocity_start="zero"``, a network grid
        less than 1.5 times coarser than the original, a pair of two contrasts refined with MIND-SSC). Report in
        ``last_finer_grid``."""
        settings = self.instance_optimization if settings is None else settings
        self.last_finer_grid = None
        report = self.last_refinement
        mapping = finer_mapping(pair.mapping)
        if (mapping is None or self.finer_grid.steps == 0 or report is None or report.velocity is None
                or settings.velocity_start != "network" or pair.fixed_normalised is None
                or pair.moving_normalised is None):
            return None
        if not finer_grid_applies(settings):
            logger.info("finer-grid stage skipped: the pair refines with %s (two contrasts)", settings.similarity)
            return None
        fixed = self._image(mapping.to_network(pair.fixed_normalised, order=1))
        moving = self._image(mapping.to_network(pair.moving_normalised, order=1))
        field, self.last_finer_grid = refine_on_finer_grid(fixed, moving, report.velocity.to(self.device), settings,
                                                           self.finer_grid, self.deterministic)
        del fixed, moving
        velocity = self.last_finer_grid.velocity
        if self.keep_velocity_inverse and velocity is not None and not self.last_finer_grid.kept_network:
            steps = self.finer_grid.velocity_integration_steps(settings)
            with torch.no_grad():
                self.last_velocity_inverse = exponential_field(-velocity, tuple(pair.mapping.shape), steps).cpu()
        return mapping.field_to_original(field[0].cpu().numpy())

    def _image(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(self.device)

    def prepare(self, fixed: np.ndarray | str | Path, moving: np.ndarray | str | Path,
                fixed_geometry: Geometry | None = None, moving_geometry: Geometry | None = None) -> PreparedPair:
        """Read (if paths), check, align and preprocess a pair."""
        _, configuration = self._require_ready()
        fixed_name, moving_name = "fixed image", "moving image"
        if isinstance(fixed, (str, Path)):
            fixed_name = str(fixed)
            fixed, fixed_geometry = read_image(fixed)
        if isinstance(moving, (str, Path)):
            moving_name = str(moving)
            moving, moving_geometry = read_image(moving)
        return prepare_arrays(fixed, moving, configuration, fixed_geometry, moving_geometry, fixed_name, moving_name)

    def predict_pair(self, fixed: np.ndarray | str | Path, moving: np.ndarray | str | Path,
                     fixed_geometry: Geometry | None = None, moving_geometry: Geometry | None = None) -> np.ndarray:
        """Register ``moving`` to ``fixed``: float32 ``(H, W, D, 3)`` pull field on the original fixed grid.

        Arrays are in (i, j, k) order; without a geometry the planned original spacing is assumed. A moving image
        on another grid is resampled onto the fixed grid first (logged).
        """
        return self.predict_prepared(self.prepare(fixed, moving, fixed_geometry, moving_geometry))

    def describe(self) -> dict[str, Any]:
        """A short summary for logs and benchmark output."""
        return {"configuration": self.configuration_name, "folds": list(self.folds), "device": str(self.device),
                "threads": torch.get_num_threads(), "channels_last": self.channels_last, "start": self.start,
                "instance_optimization": self.instance_optimization.to_json() if self.configuration else None,
                "finer_grid": self.finer_grid.to_json()}
