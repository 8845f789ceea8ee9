"""python -m tfquant.benchmark"""
from . import _console

if __name__ == "__main__":
    _console()
