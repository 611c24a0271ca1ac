"""Filter-norm and dead-feature analyses of Das et al. (arXiv:2111.12495).

For the ResNet-18 without normalisation the paper tracks the L2 norm of every
convolution filter through training and counts filters and pooled features
that "zero out": their norm falls to about zero and never recovers. Here a
filter is near zero when its L2 norm is below a threshold, and zeroed out at
an epoch when it is near zero then and has stayed near zero at every epoch
since it first fell below. Only the count at the last epoch is final: a filter
zeroed out so far may still recover later.

The per-filter norms of every epoch are saved as NumPy files in
`workdir/filter_norms/`, so the history survives a resume and can be studied
after the run.
"""

import os
import re
import tempfile
from typing import Any, Mapping

import numpy as np

from experiments import metrics as metrics_lib
from experiments import models

FILTER_NORMS_DIRNAME = 'filter_norms'
_EPOCH_FILE = re.compile(r'epoch_(\d+)\.npz')


def filter_norms(params: Any) -> dict[str, np.ndarray]:
  """Computes the L2 norm of every output filter of every convolution.

  Args:
    params: a ResNet's 'params' collection (host or device arrays).

  Returns:
    A dict from kernel paths (as `models.conv_kernels` names them) to float32
    NumPy arrays of shape [out_channels]: the norm over height, width and
    input channels of each filter.
  """
  norms = {}
  for path, kernel in models.conv_kernels(params).items():
    kernel = np.asarray(kernel, np.float32)
    norms[path] = np.sqrt(np.sum(np.square(kernel), axis=(0, 1, 2)))
  return norms


def count_near_zero(
    norms: Mapping[str, np.ndarray], threshold: float
) -> dict[str, int]:
  """Counts the filters of each layer whose norm is below `threshold`."""
  return {path: int(np.sum(np.asarray(n) < threshold))
          for path, n in norms.items()}


def zeroed_out_masks(
    history: list[Mapping[str, np.ndarray]], threshold: float
) -> dict[str, np.ndarray]:
  """Flags filters that are near zero now and have not recovered since.

  Args:
    history: per-epoch filter norms in epoch order, each a dict from layer
      path to norms of shape [out_channels].
    threshold: norm below which a filter counts as near zero.

  Returns:
    A dict from layer path to a boolean array of shape [out_channels]: True
    where the filter is below `threshold` at the last epoch and at every epoch
    since the first one at which it was below.
  """
  if not history:
    return {}
  masks = {}
  for path in history[-1]:
    below = np.stack([np.asarray(epoch[path]) < threshold
                      for epoch in history])
    ever_below = below.any(axis=0)
    first_below = np.argmax(below, axis=0)
    # Below at every epoch from first_below to the end.
    epochs = np.arange(below.shape[0])[:, None]
    since_first = epochs >= first_below[None, :]
    stayed_below = np.all(below | ~since_first, axis=0)
    masks[path] = ever_below & stayed_below
  return masks


def filter_summary(
    history: list[Mapping[str, np.ndarray]], threshold: float
) -> dict[str, float]:
  """Summarises the latest filter norms for the metrics of an epoch.

  Args:
    history: per-epoch filter norms in epoch order (see `zeroed_out_masks`).
    threshold: norm below which a filter counts as near zero.

  Returns:
    Scalars: 'filters_near_zero' (all layers), 'filters_near_zero/<layer>'
    for each layer, 'filters_zeroed_out' (near zero and never recovered so
    far), 'filters_recovered' (near zero at an earlier epoch, above the
    threshold now) and 'filter_norm_min'.
  """
  latest = history[-1]
  near_zero = count_near_zero(latest, threshold)
  zeroed_out = zeroed_out_masks(history, threshold)
  ever_below = {
      path: np.any(np.stack([np.asarray(e[path]) < threshold
                             for e in history]), axis=0)
      for path in latest
  }
  summary = {'filters_near_zero': float(sum(near_zero.values()))}
  summary.update(
      {f'filters_near_zero/{path}': float(n) for path, n in near_zero.items()}
  )
  summary['filters_zeroed_out'] = float(
      sum(int(mask.sum()) for mask in zeroed_out.values()))
  summary['filters_recovered'] = float(sum(
      int(np.sum(ever_below[path] & (np.asarray(latest[path]) >= threshold)))
      for path in latest))
  summary['filter_norm_min'] = float(
      min(float(np.min(n)) for n in latest.values()))
  return summary


def save_filter_norms(
    workdir: str, epoch: int, norms: Mapping[str, np.ndarray]
) -> str:
  """Saves one epoch's filter norms as `workdir/filter_norms/epoch_NNNN.npz`.

  Returns:
    The path written.
  """
  directory = os.path.join(workdir, FILTER_NORMS_DIRNAME)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f'epoch_{epoch:04d}.npz')
  # Written under a temporary name and renamed, so a crash never leaves a
  # half-written file for a resumed run to load.
  with tempfile.NamedTemporaryFile(
      dir=directory, prefix=f'.epoch_{epoch:04d}.', suffix='.tmp',
      delete=False) as f:
    np.savez(f, **{name: np.asarray(n) for name, n in norms.items()})
    f.flush()
    os.fsync(f.fileno())
  os.chmod(f.name, metrics_lib.new_file_mode())
  os.replace(f.name, path)
  return path


def _saved_epochs(directory: str) -> list[int]:
  """Returns the epochs of the filter-norm files in `directory`, sorted."""
  if not os.path.isdir(directory):
    return []
  return sorted(
      int(match.group(1))
      for match in map(_EPOCH_FILE.fullmatch, os.listdir(directory))
      if match
  )


def remove_filter_norms_after(workdir: str, epoch: int) -> int:
  """Deletes the saved filter norms of epochs after `epoch`.

  A run resumed from a checkpoint of `epoch` trains those epochs again, and
  their old files came from the discarded continuation.

  Returns:
    The number of files deleted.
  """
  directory = os.path.join(workdir, FILTER_NORMS_DIRNAME)
  later = [e for e in _saved_epochs(directory) if e > epoch]
  for later_epoch in later:
    os.remove(os.path.join(directory, f'epoch_{later_epoch:04d}.npz'))
  return len(later)


def load_filter_norm_history(
    workdir: str, *, up_to_epoch: int
) -> list[dict[str, np.ndarray]]:
  """Loads the saved filter norms of epochs 1..`up_to_epoch`, in order.

  Files of later epochs (written by a run that went past its last checkpoint
  before it stopped) are ignored, so a resumed run rebuilds the history it
  restarts from.
  """
  directory = os.path.join(workdir, FILTER_NORMS_DIRNAME)
  history = []
  for epoch in _saved_epochs(directory):
    if epoch > up_to_epoch:
      break
    with np.load(os.path.join(directory, f'epoch_{epoch:04d}.npz')) as data:
      # np.savez stores '/' in names unchanged, so layer paths round-trip.
      history.append({name: data[name] for name in data.files})
  return history


def count_dead_features(
    feature_max: np.ndarray, threshold: float
) -> int:
  """Counts pooled features whose largest absolute value is below `threshold`.

  Args:
    feature_max: shape [num_features], the maximum over the test set of each
      pooled feature's absolute value.
    threshold: value below which a feature counts as dead.
  """
  return int(np.sum(np.asarray(feature_max) < threshold))
