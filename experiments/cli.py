"""Command-line helpers shared by experiments/main.py and experiments/compare.py.

They turn a mistake on the command line (a misspelt config field, a value of
the wrong type, a config file that does not exist) into one line that names
it, where ml_collections would print a long traceback.
"""

import sys
from typing import Any, NoReturn, Sequence

from absl import app
from absl import flags
import ml_collections


def _exit_with(message: str) -> NoReturn:
  print(f'Error: {message}', file=sys.stderr)
  sys.exit(1)


def _unknown_field_message(error: BaseException) -> str:
  """Returns the field and any suggestion from ml_collections' KeyErrors."""
  field, suggestion = None, ''
  current = error
  while current is not None:
    if isinstance(current, KeyError) and current.args:
      text = str(current.args[0])
      if 'Did you mean' in text:
        suggestion = ' ' + text[text.index('Did you mean'):].strip()
      else:
        field = text
    current = current.__context__
  if field is None:
    return str(error)
  return f'the configuration has no field {field!r}.{suggestion}'


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses the command line as `absl.app.run` does, without a traceback.

  Pass it to `app.run(main, flags_parser=parse_flags)`.

  Args:
    argv: the command line, program name first.

  Returns:
    The arguments that are not flags, program name first.
  """
  try:
    return app.parse_flags_with_usage(list(argv))
  except (AttributeError, KeyError) as error:
    # A --config.FIELD override of a field the configuration lacks.
    _exit_with(_unknown_field_message(error))
  except (TypeError, ValueError) as error:
    # An override that descends into a field that is not a ConfigDict.
    _exit_with(f'invalid --config override: {error}. Check the field names '
               'in the configuration file.')


def load_config(flag_name: str = 'config') -> ml_collections.ConfigDict:
  """Returns the configuration of a config-file flag, or exits with a message.

  ml_collections loads the file on first access, so a missing or broken file
  shows up here.

  Args:
    flag_name: the name of the flag defined by
      `config_flags.DEFINE_config_file`.
  """
  try:
    config: Any = getattr(flags.FLAGS, flag_name)
    # A file that failed to load gives a stand-in that raises on first use.
    config.keys()
  except OSError as error:
    # ml_collections chains the load failure, whose last line is the reason
    # (for example "[Errno 2] No such file or directory: 'configs/x.py'").
    while error.__cause__ is not None:
      error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    _exit_with(f'could not load the configuration file given to '
               f'--{flag_name}: {lines[-1] if lines else error}')
  return config
