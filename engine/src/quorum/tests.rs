//! Data tables in the manner of raft-rs's `src/quorum/testdata`: each row names the voters
//! and one vote per member index (`y` yes, `n` no, `_` not yet), and the expected result.
//! Then the rules Q1 and Q2, exhaustively over small configs.

use super::*;

/// `votes[i]` is member `i`'s answer: `y`, `n` or `_`.
fn ballots(votes: &str) -> (MemberSet, MemberSet) {
    let mut yes = MemberSet::EMPTY;
    let mut no = MemberSet::EMPTY;
    for (i, c) in votes.chars().enumerate() {
        match c {
            'y' => {
                yes.insert(i);
            }
            'n' => {
                no.insert(i);
            }
            '_' => {}
            other => panic!("bad vote {other:?}"),
        }
    }
    (yes, no)
}

/// A set from a string of member marks: `x` at index `i` means member `i` is in it.
fn set(marks: &str) -> MemberSet {
    MemberSet::of(marks.chars().enumerate().filter(|(_, c)| *c == 'x').map(|(i, _)| i))
}

use VoteResult::{Lost, Pending, Won};

#[test]
fn majority_table() {
    // (members, votes, expected)
    let table: &[(usize, &str, VoteResult)] = &[
        (1, "_", Pending),
        (1, "y", Won),
        (1, "n", Lost),
        (2, "y_", Pending),
        (2, "yy", Won),
        (2, "yn", Lost),
        (2, "n_", Lost),
        (3, "___", Pending),
        (3, "y__", Pending),
        (3, "yy_", Won),
        (3, "y_y", Won),
        (3, "yn_", Pending),
        (3, "nn_", Lost),
        (3, "n_n", Lost),
        (3, "yny", Won),
        (3, "ynn", Lost),
        (4, "yy__", Pending),
        (4, "yyy_", Won),
        (4, "yynn", Lost),
        (4, "yyn_", Pending),
        (5, "yyy__", Won),
        (5, "yy___", Pending),
        (5, "nnn__", Lost),
        (5, "yynn_", Pending),
        (5, "yynny", Won),
        // Votes of non-members are ignored.
        (3, "__nyy", Pending),
        (3, "yy_nn", Won),
    ];
    for &(n, votes, expected) in table {
        let (yes, no) = ballots(votes);
        assert_eq!(QuorumSet::majority(n).vote(yes, no), expected, "{n} members, votes {votes}");
    }
}

#[test]
fn joint_table() {
    // (old members, new members, votes, expected): both majorities must be won.
    let table: &[(&str, &str, &str, VoteResult)] = &[
        ("xxx", "xxx", "yy_", Won),
        ("xxx_", "_xxx", "yy__", Pending), // old won, new has one of three
        ("xxx_", "_xxx", "_yy_", Won),
        ("xxx_", "_xxx", "yy_y", Won),
        ("xxx_", "_xxx", "yyn_", Pending),
        ("xxx_", "_xxx", "yynn", Lost), // new: n at 2 and 3 leaves one of three
        ("xxx_", "_xxx", "nn__", Lost), // old lost
        ("xxx___", "___xxx", "yy_yy_", Won),
        ("xxx___", "___xxx", "yyyy__", Pending),
        ("xxx___", "___xxx", "yyynn_", Lost),
        ("x", "xxx", "yyy", Won),
        ("x", "xxx", "nyy", Lost),
        ("xxxxx", "xxx", "yyy__", Won),
    ];
    for &(old, new, votes, expected) in table {
        let (yes, no) = ballots(votes);
        let q = QuorumSet::Joint(set(old), set(new));
        assert_eq!(q.vote(yes, no), expected, "old {old}, new {new}, votes {votes}");
    }
}

#[test]
fn unanimous_table() {
    let table: &[(usize, &str, VoteResult)] = &[
        (1, "y", Won),
        (3, "yy_", Pending),
        (3, "yyy", Won),
        (3, "yyn", Lost),
        (3, "n__", Lost),
        (5, "yyyy_", Pending),
    ];
    for &(n, votes, expected) in table {
        let (yes, no) = ballots(votes);
        assert_eq!(QuorumSet::unanimous(n).vote(yes, no), expected, "{n} members, votes {votes}");
    }
}

/// Every quorum set over members `0..n` that the tests explore: majorities of every
/// non-empty subset, joints of every pair of non-empty subsets, unanimity.
fn quorum_sets(n: usize) -> Vec<QuorumSet> {
    let subsets: Vec<MemberSet> = (1u64..1 << n).map(MemberSet).collect();
    let mut sets = vec![QuorumSet::unanimous(n)];
    for &a in &subsets {
        sets.push(QuorumSet::Majority(a));
        if n <= 5 {
            for &b in &subsets {
                sets.push(QuorumSet::Joint(a, b));
            }
        }
    }
    sets
}

#[test]
fn any_two_quorums_intersect() {
    // Q1, exhaustively: majorities up to 7 members, joint configs up to 5.
    for n in 1..=7 {
        let all: Vec<MemberSet> = (0u64..1 << n).map(MemberSet).collect();
        for q in quorum_sets(n) {
            let quorums: Vec<MemberSet> = all.iter().copied().filter(|&s| q.is_quorum(s)).collect();
            assert!(!quorums.is_empty(), "{q:?} has a quorum (all its voters)");
            for &a in &quorums {
                for &b in &quorums {
                    assert!(!a.intersection(b).is_empty(), "{q:?}: quorums {a:?} and {b:?} are disjoint");
                }
            }
            // A joint quorum is a quorum of each of its configs: that is what hands over.
            if let QuorumSet::Joint(old, new) = q {
                for &s in &quorums {
                    assert!(QuorumSet::Majority(old).is_quorum(s) && QuorumSet::Majority(new).is_quorum(s));
                }
            }
        }
    }
}

#[test]
fn won_and_lost_are_final_and_exclusive() {
    // Q2, exhaustively up to 5 members: adding a yes never leaves Won, adding a no never
    // leaves Lost, and Won exactly when the yes votes are a quorum.
    for n in 1..=5 {
        for q in quorum_sets(n) {
            for yes in (0u64..1 << n).map(MemberSet) {
                for no in (0u64..1 << n).map(MemberSet).filter(|no| no.intersection(yes).is_empty()) {
                    let r = q.vote(yes, no);
                    assert_eq!(r == Won, q.is_quorum(yes), "{q:?} yes {yes:?} no {no:?}");
                    for i in 0..n {
                        let (mut y, mut x) = (yes, no);
                        if y.insert(i) && !no.contains(i) && r == Won {
                            assert_eq!(q.vote(y, no), Won, "{q:?}: one more yes left Won");
                        }
                        if x.insert(i) && !yes.contains(i) && r == Lost {
                            assert_eq!(q.vote(yes, x), Lost, "{q:?}: one more no left Lost");
                        }
                    }
                    // Lost means no completion of the pending members can win.
                    if r == Lost {
                        let pending = MemberSet::first(n).intersection(MemberSet(!(yes.0 | no.0)));
                        assert!(!q.is_quorum(yes.union(pending)), "{q:?} lost but winnable");
                    }
                    // Pending means both remain possible.
                    if r == Pending {
                        let pending = MemberSet::first(n).intersection(MemberSet(!(yes.0 | no.0)));
                        assert!(q.is_quorum(yes.union(pending)), "{q:?} pending but unwinnable");
                    }
                }
            }
        }
    }
}

#[test]
fn member_sets() {
    let mut s = MemberSet::EMPTY;
    assert!(s.insert(3) && !s.insert(3));
    assert!(s.contains(3) && !s.contains(2) && !s.contains(64));
    assert_eq!(s.len(), 1);
    assert_eq!(MemberSet::first(3).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(MemberSet::first(64).len(), 64);
    assert!(MemberSet::of([0, 2]).is_subset(MemberSet::first(3)));
}
