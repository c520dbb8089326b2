"""Tests of core.convert: conversion, verification, loading, Hub upload/download and the CLI."""
