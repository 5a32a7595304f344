//! Learning this home: the home store the daemon fills ([`store`]), the validation
//! set training leaves beside its detectors ([`validation`]), and `hearken adapt`,
//! which teaches the detectors the household's own false alarms ([`adapt`]), and
//! `hearken enroll`, which learns the household's own sounds ([`enroll`]).

pub mod adapt;
pub mod enroll;
