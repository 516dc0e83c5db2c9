"""Python references the native core is held to by the differential property
tests (tests/property/test_native_*_props.py). Test-only: the library ships
one implementation, the native one (issue 25)."""
