"""Evaluation: batch generation, report metrics, the CheXpert-style labeler, perplexity.

    generate          batched generation over a dataset, with image ablations
    evaluator         `ReportEvaluator` behind evaluate.py: generation (resumable, torchrun) + metrics
    predictions       predictions.jsonl / .csv files, resume and merging of ranks
    report_metrics    every metric of a predictions file, bootstrap intervals, tables
    vqa_metrics       visual question answering: closed accuracy, open exact match and token recall
    rouge, caption_metrics, clinical, bootstrap, text    the metrics and the text clean-up they share
    chexpert_rules    the rule labeler (phrase lists in phrases/), also a CLI
    plugins           optional BERTScore / CheXbert / RadGraph from local weights
    compare           several predictions files side by side
    perplexity        held-out perplexity of a stage-0 LLM
(The synthetic learnability task's finding-level scores live with it, in xraygpt/embedded/.)
"""
