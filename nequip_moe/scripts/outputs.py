"""Write several output files all or none: each to a temporary file, renamed only once all
succeeded, so that an error never leaves a half-written output or changes an existing one."""

import os


def write_all_or_nothing(writers):
    """Run ``write(tmp_path)`` for each ``(path, write)``; rename into place only if all succeed.

    Args:
        writers: ``(path, write)`` pairs, ``write`` a function of the temporary path
    """
    temporary = {}
    try:
        for path, write in writers:
            directory, name = os.path.split(os.path.abspath(path))
            temporary[path] = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
            write(temporary[path])
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporary.values():
            if os.path.exists(tmp):
                os.remove(tmp)
