"""Source of the python-function servables the end-to-end tests publish (written into a package)."""

FUNCTIONS = """
import os
import time


def noop(x):
    return "hello world"


def mean(values):
    return sum(values) / len(values)


def double(values):
    return [2 * v for v in values]


def add_one(values):
    return [v + 1 for v in values]


def square(x):
    return x * x


def scale(values, factor=1):
    return [factor * v for v in values]


def slow(spec):
    # Report the worker service's pid (our parent) so the test can kill the worker mid-task.
    with open(spec["pidfile"] + ".tmp", "w") as fh:
        fh.write(str(os.getppid()))
    os.replace(spec["pidfile"] + ".tmp", spec["pidfile"])
    time.sleep(spec.get("seconds", 60))  # still running when the test kills its worker
    return "finished"
"""
