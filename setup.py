# The C core is a cffi extension; setuptools needs this file to know about it.
from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
