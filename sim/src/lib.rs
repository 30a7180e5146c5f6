//! bop simulation.
