"""Test suites (fstests, blktests) built for the guest and checked in it."""
