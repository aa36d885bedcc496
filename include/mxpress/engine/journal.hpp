// mxpress/engine/journal.hpp — the outcome journal: append-only JSON Lines.
//
// An umbrella, kept so that every existing `#include "…/journal.hpp"` goes
// on working: the journal is three topics, each in a file of its own (one
// topic per file; engine headers stay under 600 lines):
//   journal_format.hpp  the line format: statuses, journal_entry,
//                       timestamps, header and outcome lines
//   journal_writer.hpp  journal_writer: the locked file, batched writes
//   journal_reader.hpp  journal_state and read_journal() for --resume
// Include this one for the journal as a whole; the contract
// (docs/ARCHITECTURE.md, The journal) is spelled out in the three.
#pragma once

#include "mxpress/engine/journal_format.hpp"
#include "mxpress/engine/journal_reader.hpp"
#include "mxpress/engine/journal_writer.hpp"
