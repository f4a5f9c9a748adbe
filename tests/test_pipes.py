"""sngin.workers.pipes: frames written without waiting, queued in order when the pipe is full."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from sandbox.frame_input import READ_SIZE
from sngin.workers.pipes import READS_BEFORE_YIELD, PipeReader, PipeWriter


def nonblocking_pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


async def test_frames_larger_than_the_pipe_arrive_whole_and_in_order():
    read_fd, write_fd = nonblocking_pipe()
    frames = [bytes([n]) * size for n, size in enumerate((10, 300_000, 5, 200_000, 7))]
    try:
        async with trio.open_nursery() as nursery:
            writer = PipeWriter(write_fd, nursery)
            for frame in frames:
                writer.send(frame)  # never waits, even with nobody reading yet
            assert writer.queued > 0  # the pipe (64 KiB) could not take it all
            reader = PipeReader(read_fd)
            received = [await reader.receive_exactly(len(frame)) for frame in frames]
        assert received == frames
        assert writer.queued == 0
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_a_closed_reader_end_marks_the_writer_broken():
    read_fd, write_fd = nonblocking_pipe()
    os.close(read_fd)
    try:
        async with trio.open_nursery() as nursery:
            writer = PipeWriter(write_fd, nursery)
            writer.send(b"frame")  # EPIPE: no exception for the caller
            assert writer.broken
            writer.send(b"more")
            assert writer.queued == 0
    finally:
        os.close(write_fd)


async def test_reader_reports_end_of_input():
    read_fd, write_fd = nonblocking_pipe()
    os.write(write_fd, b"abc")
    os.close(write_fd)
    reader = PipeReader(read_fd)
    try:
        assert await reader.receive_exactly(2) == b"ab"
        with pytest.raises(EOFError):
            await reader.receive_exactly(2)
    finally:
        os.close(read_fd)


async def test_a_reader_that_always_finds_data_still_yields(tmp_path):
    # A file is always readable: the stand-in for a worker that floods its pipe.
    flood = tmp_path / "flood"
    flood.write_bytes(b"x" * (READ_SIZE * READS_BEFORE_YIELD * 2))
    fd = os.open(flood, os.O_RDONLY)
    others_ran = 0

    async def other() -> None:
        nonlocal others_ran
        others_ran += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)  # runs only if the reader yields
            reader = PipeReader(fd)
            for _ in range(READS_BEFORE_YIELD * 2):
                assert len(await reader.receive_exactly(READ_SIZE)) == READ_SIZE  # a read each
            assert others_ran == 1
    finally:
        os.close(fd)


async def test_a_closed_reader_refuses_to_read_a_reused_fd():
    read_fd, write_fd = nonblocking_pipe()
    reader = PipeReader(read_fd)
    reader.closed = True
    try:
        with pytest.raises(trio.ClosedResourceError):
            await reader.receive_exactly(1)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_both_ends_share_one_frame_buffer_and_a_large_frame_gets_its_own():
    """sandbox.frame_input.FrameBuffer is the buffering of the worker's stdin reader and of the
    server's PipeReader: what is buffered comes first, a frame larger than one read is read
    into a buffer of its own with the buffered part already at its start."""
    from sandbox.frame_input import FrameBuffer, FrameInput

    frames = FrameBuffer()
    assert frames.take(3) is None
    assert frames.wanted(3) == READ_SIZE
    frames.feed(b"abcdef")
    assert frames.large_frame(4) is None  # small: taken from the buffer
    assert frames.take(4) == b"abcd"
    large = frames.large_frame(READ_SIZE + 10)
    assert large is not None
    frame, have = large
    assert (bytes(frame[:have]), have, len(frame), frames.empty) == (b"ef", 2, READ_SIZE + 10, True)
    read_fd, write_fd = os.pipe()
    try:
        payload = os.urandom(READ_SIZE * 3)
        reader = FrameInput(read_fd)
        os.write(write_fd, payload[:100])
        assert reader.read(10) == payload[:10]  # buffered the rest of the 100 bytes
        writer = threading.Thread(target=os.write, args=(write_fd, payload[100:]))
        writer.start()
        assert reader.read(len(payload) - 10) == payload[10:]
        writer.join()
    finally:
        os.close(read_fd)
        os.close(write_fd)
