"""The deliverable: a submission's model as one folder (`export_bundle`) and predictions from it alone
(`predict_bundle`)."""
