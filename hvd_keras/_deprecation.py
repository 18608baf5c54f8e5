"""Old argument names kept working for one release, with a warning."""

import warnings


def renamed(owner, old, new, old_value, new_value, note=""):
    """Returns the value passed under `old` or `new`; warns when `old` was used.

    FutureWarning rather than DeprecationWarning: it is meant for the
    scripts' authors, and Python shows it by default.
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"{owner} received both {old}= and {new}=. Received: {old}={old_value!r}, "
                        f"{new}={new_value!r}. HINT: pass only {new}= ({old}= is its old name).")
    warnings.warn(f"{owner}: {old}= is deprecated and will be removed in the next release; "
                  f"use {new}= (Keras 3's name).{(' ' + note) if note else ''}", FutureWarning, stacklevel=3)
    return old_value
