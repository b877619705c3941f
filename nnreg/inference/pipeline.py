"""Register many pairs: read ahead in worker processes, predict here, write in background workers.

``num_readers`` (``-npp``) processes read and preprocess the next pairs while the network runs; ``num_writers``
(``-nps``) processes compress and write finished fields. Both are bounded (back-pressure): at most
``num_readers + 1`` pairs are read ahead and at most ``num_writers`` exports are in flight, so memory stays at a few
pairs whatever the number of pairs. ``0`` runs that stage inline. A worker's exception is re-raised here (user
errors keep their one-line message). Outputs are written atomically; ``resume`` skips pairs whose requested files
all exist, otherwise finished files are overwritten (atomically, so an interrupted run never leaves half files).
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from tqdm import tqdm

from nnreg.inference.export import ExportJob, ExportOptions, PairOutputs, export_pair, pair_outputs
from nnreg.inference.instance_optimization import InstanceOptimization
from nnreg.inference.inverse import pair_inverse
from nnreg.inference.pairs import PairSpec, labels_for
from nnreg.inference.predictor import nnRegPredictor
from nnreg.inference.preparation import PreparedPair, prepare_files
from nnreg.planning.plans import finer_stage_follows
from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import no_empty_folder_left, remove_stale_temporaries
from nnreg.utilities.parallel import worker_died
from nnreg.utilities.progress_bars import progress_bar_disabled

if TYPE_CHECKING:
    from nnreg.inference.affine_stage import AlignedPair

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did."""

    written: list[str]
    skipped: list[str]


class BackgroundWriter:
    """Runs :func:`export_pair` in ``num_workers`` processes with back-pressure (0 = inline)."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self._pool = (ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn"))
                      if num_workers > 0 else None)
        self._pending: deque[Future] = deque()
        self._names: dict[int, str] = {}   # id(future) -> the output it writes (named if its worker dies)
        self.done: list[str] = []

    def submit(self, job: ExportJob) -> None:
        if self._pool is None:
            self.done.append(export_pair(job))
            return
        while len(self._pending) >= self.num_workers:
            self.done.append(self._next_result())
        future = self._pool.submit(export_pair, job)
        self._names[id(future)] = job.outputs.displacement.name
        self._pending.append(future)

    def _next_result(self) -> str:
        """The oldest export's result; a dead writer process is one line naming the outputs in flight."""
        future = self._pending[0]
        try:
            result = future.result()
        except BrokenProcessPool:
            raise worker_died("nnreg_predict writer", [self._names.get(id(f), "?") for f in self._pending]) from None
        self._pending.popleft()
        self._names.pop(id(future), None)
        return result

    def close(self) -> None:
        """Wait for every export; re-raise the first failure."""
        try:
            while self._pending:
                self.done.append(self._next_result())
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)


def _read_ahead(pairs: list[PairSpec], prepare: Callable[[PairSpec], PreparedPair],
                num_workers: int) -> Iterator[PreparedPair]:
    """Prepared pairs in order, ``num_workers`` processes reading up to ``num_workers + 1`` pairs ahead."""
    if num_workers <= 0:
        for pair in pairs:
            yield prepare(pair)
        return
    with ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn")) as pool:
        window: deque[tuple[Future, PairSpec]] = deque()

        def oldest() -> PreparedPair:
            try:
                result = window[0][0].result()
            except BrokenProcessPool:   # a reader was killed (e.g. out of memory): name the pairs in flight
                raise worker_died("nnreg_predict reader", [f"{p.moving.name} -> {p.fixed.name}"
                                                           for _, p in window]) from None
            window.popleft()
            return result

        queue = iter(pairs)
        try:
            for pair in queue:
                window.append((pool.submit(prepare, pair), pair))
                if len(window) > num_workers:
                    yield oldest()
            while window:
                yield oldest()
        finally:
            for future, _ in window:
                future.cancel()


def _prepare_spec(pair: PairSpec, config: object, affine: bool = False) -> "PreparedPair | AlignedPair":
    """Read and prepare one pair (``affine``: after the affine pre-alignment, :mod:`nnreg.inference.affine_stage`)."""
    if affine:
        from nnreg.inference.affine_stage import align_files

        return align_files(pair.fixed, pair.moving, config)  # type: ignore[arg-type]
    return prepare_files(pair.fixed, pair.moving, config)  # type: ignore[arg-type]


def _aligned_job(pair: PairSpec, aligned: "AlignedPair", field: np.ndarray, outputs: PairOutputs,
                 options: ExportOptions, labels: Path | None, inverse: np.ndarray | None) -> ExportJob:
    """The export of an ``--affine`` pair: the field points into the moving image's own grid (see ExportJob)."""
    from nnreg.inference.affine_stage import affine_record
    from nnreg.inference.resample import align_moving

    prepared = aligned.prepared
    before = align_moving(aligned.moving, aligned.moving_geometry, prepared.fixed_geometry, str(pair.moving)) \
        if options.qc else None      # the QC's "moving" panel: the moving image before any registration
    return ExportJob(outputs, options, field, prepared.fixed_geometry, before, prepared.fixed if options.qc else None,
                     labels, aligned.moving_geometry, inverse, moving_grid=aligned.moving_geometry,
                     moving=aligned.moving if options.save_warped or options.qc else None,
                     affine_record=affine_record(aligned, pair.fixed, pair.moving))


def plan_outputs(pairs: list[PairSpec], out: Path, options: ExportOptions,
                 resume: bool) -> tuple[list[tuple[PairSpec, PairOutputs]], list[str]]:
    """Output paths per pair; pairs to do and names skipped by ``resume``. Two pairs with one name are an error."""
    todo, skipped, seen = [], [], {}
    for pair in pairs:
        outputs = pair_outputs(out, pair.fixed, pair.moving)
        name = outputs.displacement.name
        if name in seen:
            raise NnregError(f"pairs {seen[name]} and {pair.moving.name} -> {pair.fixed.name} would both be written "
                             f"to {name}; rename the images so their 4-digit ids differ")
        seen[name] = f"{pair.moving.name} -> {pair.fixed.name}"
        if options.labels_folder is not None:
            labels_for(pair, options.labels_folder)
        if resume and outputs.finished(options):
            skipped.append(name)
        else:
            todo.append((pair, outputs))
    return todo, skipped


def output_subfolders(out: Path) -> tuple[str, ...]:
    """The folders a run writes into, relative to ``out`` (``""`` = ``out`` itself), as :func:`pair_outputs` lays
    them out: the start-up cleanup looks there and nowhere else."""
    probe = pair_outputs(out, "x_0000_0000.nii.gz", "x_0001_0000.nii.gz")
    parents = [getattr(probe, f.name).parent for f in dataclasses.fields(probe) if getattr(probe, f.name) is not None]
    return tuple(dict.fromkeys("" if parent == out else parent.relative_to(out).as_posix() for parent in parents))


def _close_after_error(writer: BackgroundWriter, error: BaseException) -> None:
    """Close ``writer`` while ``error`` is on its way up: a failure to close is logged (and noted on ``error``),
    never raised in its place, so the user sees the first error."""
    try:
        writer.close()
    except Exception as close_error:   # noqa: BLE001 - the first error is the one the user must see
        message = f"the writer also failed while stopping: {type(close_error).__name__}: {close_error}"
        logger.warning("%s (after %s: %s)", message, type(error).__name__, error)
        if hasattr(error, "add_note"):   # Python >= 3.11; on 3.10 the log line is the only trace
            error.add_note(message)


def select_part(pairs: list[PairSpec], num_parts: int = 1, part_id: int = 0) -> list[PairSpec]:
    """Pairs ``part_id, part_id + num_parts, ...`` (nnU-Net's ``-num_parts N -part_id K``): N processes, each with
    its own K, together predict every pair exactly once."""
    if num_parts < 1:
        raise NnregError(f"-num_parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise NnregError(f"-part_id must be in 0..{num_parts - 1} for -num_parts {num_parts}, got {part_id}")
    return pairs[part_id::num_parts]


def _predict_aligned(predictor: nnRegPredictor, pair: PairSpec, aligned: "AlignedPair", settings: InstanceOptimization,
                     outputs: PairOutputs, options: ExportOptions, labels: Path | None) -> ExportJob:
    """Predict an ``--affine`` pair: the whole transform (affine and network) as the field; the export job."""
    from nnreg.inference.affine_stage import affine_inverse, predict_aligned

    logger.info("%s <- %s: affine %s, foreground overlap %.2f", Path(pair.fixed).name, Path(pair.moving).name,
                aligned.affine.describe(), aligned.overlap)
    field = predict_aligned(predictor, aligned, settings)
    inverse = affine_inverse(field, aligned, str(pair.moving)) if options.inverse else None
    return _aligned_job(pair, aligned, field, outputs, options, labels, inverse)


def predict_pairs(predictor: nnRegPredictor, pairs: list[PairSpec], out: str | Path,
                  options: ExportOptions | None = None, resume: bool = False, num_readers: int = 0,
                  num_writers: int = 1, progress: bool = True, num_parts: int = 1, part_id: int = 0) -> RunSummary:
    """Register every pair (of part ``part_id`` of ``num_parts``, see :func:`select_part`) and write its outputs
    below ``out``. Several processes may write into one ``out``: each cleans up only temporaries of dead runs. A run
    that fails leaves no empty folder it created (a bad image found by a reader: nothing at all)."""
    with no_empty_folder_left(Path(out)):
        return _predict_pairs(predictor, pairs, out, options, resume, num_readers, num_writers, progress, num_parts,
                              part_id)


def _predict_pairs(predictor: nnRegPredictor, pairs: list[PairSpec], out: str | Path, options: ExportOptions | None,
                   resume: bool, num_readers: int, num_writers: int, progress: bool, num_parts: int,
                   part_id: int) -> RunSummary:
    options = options or ExportOptions()
    part = {id(p) for p in select_part(pairs, num_parts, part_id)}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NnregError("output path exists and is not a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out, output_subfolders(out))
    if stale:
        logger.info("removed %d unfinished file(s) of an interrupted run in %s", stale, out)
    todo, skipped = plan_outputs(pairs, out, options, resume)   # all pairs: name clashes are found in every part
    if num_parts > 1:
        names = {pair_outputs(out, p.fixed, p.moving).displacement.name for p in pairs if id(p) in part}
        todo = [(p, o) for p, o in todo if id(p) in part]
        skipped = [name for name in skipped if name in names]
        logger.info("part %d of %d: %d of %d pairs", part_id, num_parts, len(names), len(pairs))
    if skipped:
        logger.info("--continue: %d of %d pairs already finished, skipped", len(skipped), len(pairs))
    existing = [o for _, o in todo if o.displacement.is_file()]
    if existing and not resume:
        logger.info("%s already holds %d of these results; they are overwritten (use --continue to keep them)",
                    out, len(existing))
    config = predictor.configuration
    if config is None:
        raise RuntimeError("initialise the predictor before predicting")
    refinement = predictor.instance_optimization
    if refinement.enabled:
        logger.info("instance optimisation: up to %d steps per pair (%s)", refinement.steps, refinement.to_json())
        if predictor.finer_grid.steps and finer_stage_follows([float(f) for f in config.resampling_factor]):
            logger.info("finer-grid stage: up to %d steps on the original grid after the refinement (the network "
                        "grid is %s times coarser), %s", predictor.finer_grid.steps,
                        "x".join(f"{float(f):g}" for f in config.resampling_factor), predictor.finer_grid.to_json())
    if predictor.start == "identity":
        logger.info("--start identity: the refinement starts from the identity; the network is not run")
    predictor.keep_velocity_inverse = options.inverse and not options.affine   # (the affine path inverts u itself)
    if options.affine:
        logger.info("affine pre-alignment of every pair before the network (--affine)")
    writer = BackgroundWriter(num_writers)
    by_pair = {id(p): o for p, o in todo}
    specs = [p for p, _ in todo]
    try:
        prepared_pairs = _read_ahead(specs, partial(_prepare_spec, config=config, affine=options.affine),
                                     num_readers)
        for pair, prepared in tqdm(zip(specs, prepared_pairs), total=len(specs),
                                   desc="predict + refine" if refinement.enabled else "predict",
                                   disable=progress_bar_disabled(not progress), leave=False):
            settings = predictor.settings_for_pair(pair.fixed, pair.moving)
            if settings.similarity != refinement.similarity:
                logger.info("%s <- %s: the modalities differ, refinement with %s", Path(pair.fixed).name,
                            Path(pair.moving).name, settings.similarity)
            labels = labels_for(pair, options.labels_folder) if options.labels_folder is not None else None
            if options.affine:
                writer.submit(_predict_aligned(predictor, pair, prepared, settings, by_pair[id(pair)], options,
                                               labels))
                del prepared
                continue
            field = predictor.predict_prepared(prepared, settings)
            need_images = options.save_warped or options.qc
            inverse = pair_inverse(field, prepared, predictor.last_velocity_inverse, str(pair.moving))[0] \
                if options.inverse else None
            writer.submit(ExportJob(by_pair[id(pair)], options, field, prepared.fixed_geometry,
                                    prepared.moving_on_fixed if need_images else None,
                                    prepared.fixed if options.qc else None, labels, prepared.moving_geometry,
                                    inverse))
            del field, prepared
    except BaseException as error:
        _close_after_error(writer, error)
        raise
    writer.close()
    logger.info("wrote %d pair(s) to %s", len(writer.done), out)
    return RunSummary(written=writer.done, skipped=skipped)
