"""Data parallelism: one per-device function under `pmap` or `shard_map`.

The training and evaluation steps are written for one device. They see that
device's slice of the batch and a full copy of the state, and they combine
results across devices only through collectives over the named axis
`AXIS_NAME` (`lax.pmean`, `lax.psum`, batch normalisation's `axis_name`).
`DataParallel` runs such a function either under `jax.pmap` or under
`jax.shard_map` over a one-axis mesh, places the state and the batches to
match, and brings replicated results back to the host.
"""

import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

# Name of the device axis that every collective in the steps reduces over.
AXIS_NAME = 'batch'
PARALLELISMS = ('pmap', 'shard_map')


def launched_on_several_processes(
    environ: Mapping[str, str] = os.environ,
) -> bool:
  """Returns whether the usual cluster variables show a multi-process launch.

  True when JAX_COORDINATOR_ADDRESS is set (a manual launch), when SLURM or
  Open MPI report more than one task (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE), or
  when TPU_WORKER_HOSTNAMES lists more than one host. Cloud TPU VMs need not
  set any of these; launch them with `--distributed=true`.

  Args:
    environ: the environment variables to inspect.
  """
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  for name in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    value = environ.get(name, '')
    if value.isdigit() and int(value) > 1:
      return True
  hostnames = environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hostnames.split(',') if h]) > 1


class DataParallel:
  """Maps per-device functions over devices with `pmap` or `shard_map`.

  Under 'pmap' the state carries a leading device axis and each batch is
  reshaped to [local devices, per-device batch, ...]. Under 'shard_map' the
  state is one array per leaf, replicated over a mesh of all devices, and each
  batch is a global array sharded along its first axis. In both cases the
  per-device function receives the same shapes.

  Attributes:
    parallelism: 'pmap' or 'shard_map'.
    local_devices: the devices of this process that run the function.
  """

  def __init__(
      self, parallelism: str, devices: Optional[Sequence[jax.Device]] = None
  ):
    """Sets up the device placement.

    Args:
      parallelism: 'pmap' or 'shard_map'.
      devices: devices to run on, in a single-process run only; None uses
        every device of every process.

    Raises:
      ValueError: for an unknown `parallelism`, or `devices` in a run of
        several processes.
    """
    if parallelism not in PARALLELISMS:
      raise ValueError(
          f'Unknown parallelism {parallelism!r}. Valid values: '
          f'{", ".join(PARALLELISMS)}.'
      )
    if devices is not None and jax.process_count() > 1:
      raise ValueError(
          'A subset of devices can only be chosen in a single-process run; '
          f'this run has {jax.process_count()} processes. Leave devices unset.'
      )
    self.parallelism = parallelism
    self._pmap_devices = list(devices) if devices is not None else None
    if devices is not None:
      global_devices = list(devices)
    else:
      global_devices = jax.devices()
    self.local_devices = [
        d for d in global_devices if d.process_index == jax.process_index()
    ]
    # In a single process, pmap (JAX 0.10) returns arrays sharded along their
    # leading axis over a mesh of the local devices named AXIS_NAME. Inputs
    # placed the same way (state and batches alike) let every call reuse the
    # first compilation, where any other layout costs a second one.
    self._pmap_sharding = NamedSharding(
        jax.sharding.Mesh(np.array(self.local_devices), (AXIS_NAME,)),
        P(AXIS_NAME),
    )
    # Auto axes let shard_map accept arrays whatever their sharding.
    self.mesh = jax.sharding.Mesh(
        np.array(global_devices),
        (AXIS_NAME,),
        axis_types=(jax.sharding.AxisType.Auto,),
    )
    self._replicated = NamedSharding(self.mesh, P())
    self._batch_sharded = NamedSharding(self.mesh, P(AXIS_NAME))

  def replicate(self, tree: Any) -> Any:
    """Copies a host pytree (the same on every process) to every device."""
    if self.parallelism == 'pmap':
      num_local = len(self.local_devices)
      return jax.tree.map(
          lambda x: jax.device_put(
              np.broadcast_to(np.asarray(x), (num_local,) + np.shape(x)),
              self._pmap_sharding,
          ),
          tree,
      )
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            self._replicated, np.asarray(x)
        ),
        tree,
    )

  def unreplicate(self, tree: Any) -> Any:
    """Returns one copy of a replicated pytree as NumPy arrays on the host."""
    # Reading one device's buffer, rather than indexing (`x[0]` would compile
    # a gather for every distinct leaf shape).
    if self.parallelism == 'pmap':
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def shard_batch(self, batch: Any) -> Any:
    """Splits this process's host batch over its devices along axis 0.

    Args:
      batch: pytree of arrays whose first axis is the per-process batch,
        divisible by the number of local devices.

    Returns:
      The batch on the devices, laid out for `map`.
    """
    num_local = len(self.local_devices)

    def put(x):
      x = np.asarray(x)
      if x.shape[0] % num_local:
        raise ValueError(
            f'A batch of {x.shape[0]} examples cannot be split evenly over '
            f'{num_local} local devices; use a batch size divisible by the '
            'device count.'
        )
      if self.parallelism == 'pmap':
        stacked = x.reshape((num_local, -1) + x.shape[1:])
        return jax.device_put(stacked, self._pmap_sharding)
      return jax.make_array_from_process_local_data(self._batch_sharded, x)

    return jax.tree.map(put, batch)

  def map(
      self,
      per_device_fn: Callable[..., Any],
      *,
      donate_state: bool = False,
  ) -> Callable[[Any, Any], Any]:
    """Maps `per_device_fn(state, batch)` over the devices.

    Args:
      per_device_fn: function of a replicated state and one device's slice of
        the batch. Everything it returns must be the same on every device
        (reduced with collectives over `AXIS_NAME`).
      donate_state: let the output reuse the input state's memory.

    Returns:
      A function of the placed state and batch (from `replicate` and
      `shard_batch`) that returns replicated outputs.
    """
    donate_argnums = (0,) if donate_state else ()
    if self.parallelism == 'pmap':
      return jax.pmap(
          per_device_fn,
          axis_name=AXIS_NAME,
          devices=self._pmap_devices,
          donate_argnums=donate_argnums,
      )
    # check_vma=False gives pmap's semantics. With the check on, JAX treats
    # the replicated parameters as broadcast to every device, and the
    # transpose of that broadcast already sums gradients over devices, so
    # the loss door's own lax.pmean would count them twice. power_grad
    # detects gradients that are already summed and works either way.
    sharded_fn = jax.shard_map(
        per_device_fn,
        mesh=self.mesh,
        in_specs=(P(), P(AXIS_NAME)),
        out_specs=P(),
        check_vma=False,
    )
    return jax.jit(sharded_fn, donate_argnums=donate_argnums)
