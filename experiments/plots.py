r"""Plots of accuracy, cross-entropy and logit norm per epoch across runs.

Reads `metrics.jsonl` from each run directory and draws three panels: top-1
accuracy, cross-entropy and the mean L2 norm of the logit vector, each for
the training set (dashed) and the test set (solid).

  python -m experiments.plots runs/baseline runs/pgt \
      --labels baseline "PGT 0.25" --output runs/curves.png
"""

import argparse
import os
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

from experiments import metrics as metrics_lib

# (title, metric suffix, y-axis label, scale applied to the values)
_PANELS = (
    ('Top-1 accuracy', 'top1', 'accuracy (%)', 100.0),
    ('Cross-entropy', 'cross_entropy', 'cross-entropy (nats)', 1.0),
    ('Logit norm', 'logit_norm', 'mean L2 norm of logits', 1.0),
)


def plot_runs(
    runs: Mapping[str, str],
    output_path: str,
    *,
    title: Optional[str] = None,
) -> str:
  """Draws the per-epoch curves of several runs into one PNG file.

  Args:
    runs: legend label -> run directory holding `metrics.jsonl`.
    output_path: PNG file to write; its directory is created.
    title: optional figure title.

  Returns:
    `output_path`.

  Raises:
    FileNotFoundError: when a run directory has no `metrics.jsonl`.
  """
  figure, axes = plt.subplots(1, len(_PANELS), figsize=(5 * len(_PANELS), 4))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for index, (label, workdir) in enumerate(runs.items()):
    records = metrics_lib.epoch_records(workdir)
    color = colors[index % len(colors)]
    for axis, (_, suffix, _, scale) in zip(axes, _PANELS):
      for split, style in (('train', '--'), ('test', '-')):
        points = [(r['epoch'], r[f'{split}_{suffix}'] * scale)
                  for r in records if f'{split}_{suffix}' in r]
        if points:
          epochs, values = zip(*points)
          axis.plot(epochs, values, style, color=color, marker='o',
                    markersize=3, label=f'{label} ({split})')
  for axis, (panel_title, _, y_label, _) in zip(axes, _PANELS):
    axis.set_title(panel_title)
    axis.set_xlabel('epoch')
    axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axis.set_ylabel(y_label)
    axis.grid(alpha=0.3)
  axes[0].legend(fontsize='small')
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  directory = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(directory, exist_ok=True)
  figure.savefig(output_path, dpi=120)
  plt.close(figure)
  return output_path


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+',
                      help='run directories that hold metrics.jsonl')
  parser.add_argument('--labels', nargs='+',
                      help='legend labels, one per run (default: the '
                      'directory names)')
  parser.add_argument('--output', default='curves.png',
                      help='PNG file to write (default: curves.png)')
  parser.add_argument('--title', help='figure title')
  args = parser.parse_args(argv)
  labels = args.labels or [os.path.basename(os.path.normpath(w))
                           for w in args.workdirs]
  if len(labels) != len(args.workdirs):
    parser.error(f'got {len(labels)} labels for {len(args.workdirs)} runs; '
                 'pass one label per run directory.')
  for workdir in args.workdirs:
    metrics_path = os.path.join(workdir, metrics_lib.METRICS_FILENAME)
    if not os.path.isfile(metrics_path):
      parser.error(f'{metrics_path} not found: pass run directories that '
                   'contain metrics.jsonl.')
  path = plot_runs(dict(zip(labels, args.workdirs)), args.output,
                   title=args.title)
  print(f'Wrote {path}')


if __name__ == '__main__':
  main()
