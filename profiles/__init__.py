"""Profiles shipped with steerkit (package data, installed as ``steerkit.profiles``).

Read them through :mod:`steerkit.shipped`, never by a path relative to the code.
"""
