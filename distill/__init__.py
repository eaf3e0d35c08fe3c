"""`make distill`: one student network learns the blended ensemble's probabilities, so a single model within the
size budget keeps much of what the ensemble knows. It sits above the stages: it asks `submissions` for the
teacher and `pipelines` to train the student, which then is a member like any other."""
